#!/usr/bin/env bash
# Builds Istio's control plane from the Go module proxy: pilot-discovery
# (istiod) and istioctl from istio.io/istio at the pseudo-version that
# versions.env pins for the Istio minor given as $1 (default $ISTIO_VERSION),
# and copies the module's Helm charts next to them:
#
#   ${XDG_CACHE_HOME:-~/.cache}/meshfed/istio/<module version>/bin/{pilot-discovery,istioctl}
#   ${XDG_CACHE_HOME:-~/.cache}/meshfed/istio/<module version>/charts/{base,istio-control,...}
#
#   build-istio.sh          # the default version (1.31)
#   build-istio.sh 1.30     # another one listed in ISTIO_VERSIONS
#
# Prints that root directory on stdout; everything else goes to stderr.
# Warm cache: prints it at once. Cold: see docs/istio.md for timings.
# Set MESHFED_ISTIO_CACHE to move the cache root (…/meshfed/istio).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
: "${ISTIO_VERSION:?ISTIO_VERSION missing from $here/versions.env}"
minor="${1:-$ISTIO_VERSION}"
pin="ISTIO_${minor//./_}_MODULE_VERSION"
ISTIO_MODULE_VERSION="${!pin:-}"
[[ -n "$ISTIO_MODULE_VERSION" ]] || { echo "no $pin in $here/versions.env (built versions: $ISTIO_VERSIONS)" >&2; exit 1; }
# Replacements for dependencies the proxy does not serve at the pinned version.
replaces="ISTIO_${minor//./_}_REPLACE"
ISTIO_REPLACE="${!replaces:-}"

# Bump when the recipe below changes in a way that changes the output.
recipe=1
module="istio.io/istio"
root="${MESHFED_ISTIO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meshfed/istio}/$ISTIO_MODULE_VERSION"
stamp="recipe=$recipe module=$module@$ISTIO_MODULE_VERSION${ISTIO_REPLACE:+ replace=$ISTIO_REPLACE}"

complete() {
  [[ -f "$root/.complete" && "$(cat "$root/.complete")" == "$stamp" &&
    -x "$root/bin/pilot-discovery" && -x "$root/bin/istioctl" &&
    -f "$root/charts/base/Chart.yaml" ]]
}

if complete; then
  echo "$root"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build Istio" >&2; exit 1; }
mkdir -p "$root"
# Parallel callers (several test binaries at once) build once.
exec 9>"$root/.lock"
flock 9
if complete; then
  echo "$root"
  exit 0
fi

start=$(date +%s)
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0

# Istio's release tags carry no "v" and the proxy here does not serve them;
# the pin is a pseudo-version of a release-branch commit (see versions.env).
echo ">> downloading $module@$ISTIO_MODULE_VERSION" >&2
dl="$(cd "$root" && go mod download -json "$module@$ISTIO_MODULE_VERSION")"
field() { sed -n "s/^\s*\"$1\": \"\(.*\)\",\?$/\1/p" <<<"$dl"; }
moddir="$(field Dir)"
gomod="$(field GoMod)"
[[ -d "$moddir" && -f "$gomod" ]] || { echo "download failed: $dl" >&2; exit 1; }
release="$(cat "$moddir/VERSION" 2>/dev/null || echo unknown)"
commit="${ISTIO_MODULE_VERSION##*-}"

# A wrapper module: istio.io/istio's own replace directives do not apply to a
# module that requires it, so repeat them here (none at the current pin, but
# the recipe copies whatever the pinned go.mod has, single-line or block form).
src="$root/src"
rm -rf "$src"
mkdir -p "$src"
{
  echo "module meshfed.io/testbed/istio"
  echo
  grep -E '^go [0-9.]+' "$gomod"
  echo
  echo "require $module $ISTIO_MODULE_VERSION"
  echo
  awk '
    /^replace[ \t]*\($/ { inblock = 1; next }
    inblock && /^\)/    { inblock = 0; next }
    inblock && NF       { print "replace " $0; next }
    /^replace[ \t]/     { print }
  ' "$gomod"
  for r in $ISTIO_REPLACE; do echo "replace ${r%%=*} => ${r#*=}" | tr '@' ' '; done
} >"$src/go.mod"
cat >"$src/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "istio.io/istio/istioctl/cmd/istioctl"
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
GO
# Start from istio's own go.sum so tidy fetches only what is missing.
cp "$moddir/go.sum" "$src/go.sum"
chmod u+w "$src/go.sum"

v="$module/pkg/version"
ldflags="-s -w -X $v.buildVersion=$release-$commit -X $v.buildGitRevision=$commit"
ldflags+=" -X $v.buildStatus=Clean -X $v.buildTag=$ISTIO_MODULE_VERSION -X $v.buildHub=none"
(
  cd "$src"
  echo ">> resolving modules (Istio $release, $ISTIO_MODULE_VERSION)" >&2
  go mod tidy >&2
  rm -rf "$root/bin.tmp"
  mkdir -p "$root/bin.tmp"
  for cmd in pilot/cmd/pilot-discovery istioctl/cmd/istioctl; do
    echo ">> building ${cmd##*/}" >&2
    go build -trimpath -ldflags "$ldflags" -o "$root/bin.tmp/${cmd##*/}" "$module/$cmd" >&2
  done
)
rm -rf "$root/bin"
mv "$root/bin.tmp" "$root/bin"

# The module cache is read-only: copy, then make the copy writable.
rm -rf "$root/charts"
cp -r "$moddir/manifests/charts" "$root/charts"
chmod -R u+w "$root/charts"

"$root/bin/pilot-discovery" version -s >&2 || true
echo "$stamp" >"$root/.complete"
echo ">> Istio $release ($ISTIO_MODULE_VERSION) built in $(($(date +%s) - start))s into $root" >&2
echo "$root"
