#!/usr/bin/env bash
# Builds meshfed's operator image with podman from the Containerfile at the
# top of the repository: stages rootfs/ (operator, the shared libraries it
# links, helm, Istio's charts as /charts/<version>, /etc/passwd) and runs
# `podman build`. Usage: build.sh IMAGE:TAG. Prints IMAGE:TAG when done.
set -euo pipefail
image="${1:?usage: build.sh IMAGE:TAG}"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
# shellcheck source=../testbed/versions.env
source e2e/testbed/versions.env
# Every Istio version the test bed builds (ISTIO_VERSIONS in versions.env):
# /charts/<version> is what users give as spec.controlPlane.version.

bash e2e/testbed/install-packages.sh
cargo build -q --release --locked -p meshfed-operator --bin meshfed-operator
binary="${CARGO_TARGET_DIR:-$repo/target}/release/meshfed-operator"
helm="$(bash e2e/testbed/build-helm.sh)"

stage="${CARGO_TARGET_DIR:-$repo/target}/image"
rm -rf "$stage"
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/charts"
install -m 0755 "$binary" "$root/usr/local/bin/meshfed-operator"
install -m 0755 "$helm" "$root/usr/local/bin/helm"
# Exactly the libraries the binary links, at the paths the loader expects.
ldd "$binary" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
  while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
for v in $ISTIO_VERSIONS; do
  cp -r "$(bash e2e/testbed/build-istio.sh "$v")/charts" "$root/charts/$v"
done
chmod -R a+rX "$root/charts"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"

bash e2e/image/podman.sh build -q -f "$repo/Containerfile" -t "$image" "$stage" >&2
echo "$image"
