#!/usr/bin/env bash
# Builds the test bed's binaries (Kubernetes control plane, kubectl, etcd,
# kwok) from pinned Go modules into a cache directory keyed by the pins.
# Prints the bin directory on stdout; everything else goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

# Bump when the recipe below changes in a way that changes the binaries.
recipe=1
key="$(echo "$recipe $KUBERNETES_VERSION $ETCD_VERSION $KWOK_VERSION $(go env GOVERSION)" | sha256sum | cut -c1-16)"
cache_root="${MESHFED_TESTBED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshfed/testbed}"
root="$cache_root/$key"
bin="$root/bin"

if [[ -f "$root/.complete" ]]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build the test bed" >&2; exit 1; }
mkdir -p "$bin" "$root/src"
start=$(date +%s)

# k8s.io/kubernetes pins its staging modules at v0.0.0 and replaces them with
# ./staging; a wrapper module must replace each with the matching v0.Y.Z.
k8s_minor_patch="${KUBERNETES_VERSION#v1.}"
staging_version="v0.${k8s_minor_patch}"
mod="$root/src/kubernetes"
mkdir -p "$mod"
curl -fsSL "${GOPROXY_URL:-https://proxy.golang.org}/k8s.io/kubernetes/@v/${KUBERNETES_VERSION}.mod" -o "$mod/upstream.mod"
{
  echo "module meshfed.io/testbed/kubernetes"
  echo
  grep -E '^go [0-9.]+' "$mod/upstream.mod"
  echo
  echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
  echo "require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
  echo
  grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$mod/upstream.mod" |
    awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
} > "$mod/go.mod"
cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubectl/pkg/cmd"
)
GO

minor="${k8s_minor_patch%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=${KUBERNETES_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

export CGO_ENABLED=0 GOFLAGS=-mod=mod
(
  cd "$mod"
  echo ">> resolving modules (k8s ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION})" >&2
  go mod tidy -e >&2 2>&1 || true
  go mod download >&2
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    echo ">> building $cmd" >&2
    go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
  done
  echo ">> building etcd" >&2
  go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2
)

echo ">> building kwok ${KWOK_VERSION}" >&2
GOBIN="$bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" >&2

touch "$root/.complete"
echo ">> test bed tools built in $(( $(date +%s) - start ))s into $bin" >&2
echo "$bin"
