#!/usr/bin/env bash
# What `make test` and `make demo` need that they do not build themselves:
# Go (builds the test bed's Kubernetes, etcd, kwok, helm and Istio), Rust at
# the workspace's rust-version with rustfmt and clippy, curl, and disk space.
# Installs the Rust components through rustup when it can; otherwise says
# exactly what is missing and how to get it, and fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

problems=()

# "1.26.8" >= "1.26"?
version_at_least() {
  [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" == "$2" ]]
}

rust_min=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml | head -1)
# Istio's go.mod at the newest pinned version sets the Go it needs.
go_min=1.26

for tool in go cargo make curl; do
  command -v "$tool" >/dev/null || problems+=("$tool is not installed")
done

if command -v go >/dev/null; then
  go_have=$(go env GOVERSION | sed 's/^go//')
  if ! version_at_least "$go_have" "$go_min"; then
    problems+=("Go $go_have is older than $go_min (Istio 1.31 needs it): install Go $go_min or newer, or let Go fetch it with GOTOOLCHAIN=go$go_min.0")
  fi
fi

if command -v cargo >/dev/null; then
  rust_have=$(rustc --version | awk '{print $2}')
  if ! version_at_least "$rust_have" "$rust_min"; then
    problems+=("Rust $rust_have is older than the workspace's rust-version $rust_min: rustup update stable")
  fi
  for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
      if command -v rustup >/dev/null; then
        echo ">> installing the Rust component $component" >&2
        rustup component add "$component" >&2 || problems+=("rustup could not add $component")
      else
        problems+=("cargo $component is missing (make test runs cargo fmt --check and clippy): install it with your Rust toolchain, e.g. rustup component add $component")
      fi
    fi
  done
fi

# Measured on a cold machine: ~9 GiB of cargo build output (target/), ~12
# GiB of Go build and module caches, ~1 GiB of built tools (~/.cache/meshfed).
need_gib=25
free_gib=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
if ((free_gib < need_gib)); then
  echo "warning: $free_gib GiB free here; a cold build needs about $need_gib GiB (target/, Go caches, ~/.cache/meshfed)" >&2
fi

if ((${#problems[@]})); then
  echo "make test / make demo cannot run on this machine yet:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi
