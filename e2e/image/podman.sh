#!/usr/bin/env bash
# podman with meshfed's settings (containers.conf next to this script) and
# the vfs storage driver under ~/.cache/meshfed/containers, which needs no
# kernel overlay support and stays out of the system's own image store.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
store="${XDG_CACHE_HOME:-$HOME/.cache}/meshfed/containers"
mkdir -p "$store"
export CONTAINERS_CONF="$here/containers.conf"
exec podman --storage-driver vfs --root "$store/storage" --runroot "$store/run" "$@"
