# syntax=docker/dockerfile:1
# meshfed-operator image: the operator (glibc build on distroless/cc), helm at
# /usr/local/bin/helm, and an empty /charts for the Istio charts a later
# release adds. Runs as 65532:65532 (distroless "nonroot").
#
#   docker build -t meshfed-operator:0.1.0 .
#
# Build stages are Debian 12 (bookworm) like the runtime, so the binary links
# against the same glibc. Needs the crates.io and Go module proxy registries.

FROM rust:1.95-bookworm AS operator
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshfed-operator --bin meshfed-operator \
 && install -D -m 0755 target/release/meshfed-operator /out/meshfed-operator \
 && mkdir -p /out/charts

# helm at the version pinned in e2e/testbed/versions.env, built the same way
# the tests build it (static, CGO off).
FROM golang:1.26-bookworm AS helm
WORKDIR /src
COPY e2e/testbed/versions.env e2e/testbed/build-helm.sh e2e/testbed/
RUN --mount=type=cache,target=/go/pkg/mod \
    helm="$(XDG_CACHE_HOME=/tmp/cache bash e2e/testbed/build-helm.sh)" \
 && install -D -m 0755 "$helm" /out/helm

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="meshfed-operator" \
      org.opencontainers.image.description="Joins Kubernetes clusters into one Istio multi-primary mesh" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator /out/meshfed-operator /usr/local/bin/meshfed-operator
COPY --from=helm /out/helm /usr/local/bin/helm
# Empty for now; Istio charts are baked in here later. Root-owned: read-only.
COPY --from=operator /out/charts /charts
# The root filesystem is mounted read-only; helm keeps its state under /tmp
# (an emptyDir in the chart's Deployment).
ENV HELM_CACHE_HOME=/tmp/helm/cache \
    HELM_CONFIG_HOME=/tmp/helm/config \
    HELM_DATA_HOME=/tmp/helm/data
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/meshfed-operator"]
