#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v3 at $HELM_VERSION from versions.env) from the Go
# module proxy into ${XDG_CACHE_HOME:-~/.cache}/meshfed/helm/<version>/bin/helm
# and prints that path on stdout; everything else goes to stderr.
# Warm cache: prints the path at once. Cold: about two minutes on 2 cores.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
: "${HELM_VERSION:?HELM_VERSION missing from $here/versions.env}"

root="${XDG_CACHE_HOME:-$HOME/.cache}/meshfed/helm/$HELM_VERSION"
helm="$root/bin/helm"
if [[ -f "$root/.complete" && -x "$helm" ]]; then
  echo "$helm"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build helm" >&2; exit 1; }
mkdir -p "$root"
# Parallel callers (several test binaries at once) build once.
exec 9>"$root/.lock"
flock 9
if [[ -f "$root/.complete" && -x "$helm" ]]; then
  echo "$helm"
  exit 0
fi

start=$(date +%s)
# Outside any module or workspace, so `go` resolves helm's own module graph.
cd "$root"
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
module="helm.sh/helm/v3"
echo ">> resolving $module@$HELM_VERSION" >&2
gomod="$(go mod download -json "$module@$HELM_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')"
# helm's Makefile stamps the Kubernetes version its client libraries speak
# (client-go v0.X.Y is Kubernetes 1.X) into `helm lint` and `.Capabilities`.
client_go="$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")"
k8s_minor="$(echo "$client_go" | cut -d. -f2)"
ldflags="-s -w -X $module/internal/version.version=$HELM_VERSION -X $module/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X $module/$pkg.k8sVersionMajor=1 -X $module/$pkg.k8sVersionMinor=$k8s_minor"
done
echo ">> building helm $HELM_VERSION (Kubernetes client 1.$k8s_minor)" >&2
rm -rf "$root/bin.tmp"
GOBIN="$root/bin.tmp" go install -trimpath -ldflags "$ldflags" "$module/cmd/helm@$HELM_VERSION" >&2
rm -rf "$root/bin"
mv "$root/bin.tmp" "$root/bin"
"$helm" version --short >&2
touch "$root/.complete"
echo ">> helm built in $(( $(date +%s) - start ))s into $helm" >&2
echo "$helm"
