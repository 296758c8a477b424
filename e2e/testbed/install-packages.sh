#!/usr/bin/env bash
# Debian packages the tests run: lua5.1 (the Argo CD health check is Lua 5.1),
# faketime (a standby operator with a skewed clock), and podman with runc
# (the operator's image is built and run). Installed when missing, so
# `make test` works on a fresh machine as well as in CI.
set -euo pipefail
missing=()
command -v lua5.1 >/dev/null || missing+=(lua5.1)
command -v faketime >/dev/null || missing+=(faketime)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo ">> installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${missing[@]}" >/dev/null
