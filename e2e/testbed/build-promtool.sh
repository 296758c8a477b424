#!/usr/bin/env bash
# Builds promtool (github.com/prometheus/prometheus at $PROMETHEUS_VERSION from
# versions.env) from the Go module proxy into
# ${XDG_CACHE_HOME:-~/.cache}/meshfed/promtool/<version>/bin/promtool and prints
# that path on stdout; everything else goes to stderr. The chart's alert tests
# run it (`promtool check rules`, `promtool test rules`).
# Warm cache: prints the path at once. Cold: 4-5 minutes on 2 cores (about
# 1 GB of modules from the proxy when Go's module cache is empty).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
: "${PROMETHEUS_VERSION:?PROMETHEUS_VERSION missing from $here/versions.env}"

root="${XDG_CACHE_HOME:-$HOME/.cache}/meshfed/promtool/$PROMETHEUS_VERSION"
promtool="$root/bin/promtool"
if [[ -f "$root/.complete" && -x "$promtool" ]]; then
  echo "$promtool"
  exit 0
fi

command -v go >/dev/null || { echo "go is required to build promtool" >&2; exit 1; }
mkdir -p "$root"
# Parallel callers (several test binaries at once) build once.
exec 9>"$root/.lock"
flock 9
if [[ -f "$root/.complete" && -x "$promtool" ]]; then
  echo "$promtool"
  exit 0
fi

start=$(date +%s)
# Outside any module or workspace, so `go` resolves Prometheus' own module graph.
cd "$root"
export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
module="github.com/prometheus/prometheus"
# Module v0.X.Y is Prometheus release 3.X.Y (v0.316.0 is 3.16.0): stamp that
# into `promtool --version` the way Prometheus' own build does.
major_minor="${PROMETHEUS_VERSION#v0.}"
major_minor="${major_minor%%.*}"
release="$((major_minor / 100)).$((major_minor % 100)).${PROMETHEUS_VERSION##*.}"
pkg="github.com/prometheus/common/version"
ldflags="-s -w -X $pkg.Version=$release -X $pkg.Revision=$PROMETHEUS_VERSION -X $pkg.Branch=module -X $pkg.BuildUser=meshfed -X $pkg.BuildDate=19700101-00:00:00"
echo ">> building promtool $PROMETHEUS_VERSION (Prometheus $release)" >&2
rm -rf "$root/bin.tmp"
# remove_all_sd: leave out the cloud service-discovery plugins (AWS, Azure,
# GCE, ...), which only `promtool check config` of such configs needs; rule
# checks and rule unit tests do not, and the build is much smaller.
GOBIN="$root/bin.tmp" go install -trimpath -tags remove_all_sd -ldflags "$ldflags" \
  "$module/cmd/promtool@$PROMETHEUS_VERSION" >&2
rm -rf "$root/bin"
mv "$root/bin.tmp" "$root/bin"
"$promtool" --version >&2
touch "$root/.complete"
echo ">> promtool built in $(( $(date +%s) - start ))s into $promtool" >&2
echo "$promtool"
