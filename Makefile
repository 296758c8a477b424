# The entry points people type. `make help` lists them.
CARGO ?= cargo

.PHONY: help prerequisites demo test lint unit e2e packages testbed-tools helm promtool istio crds image bench bench-testbed bench-operator bench-scale bench-failover bench-rotation bench-upgrade clean-testbed-cache

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

demo: prerequisites testbed-tools helm istio ## Four local clusters (the operator's + three members) + sample federation with Managed Istio run by real istiods: status table, each istiod's peers, a service seen across members
	$(CARGO) run -q -p e2e --bin demo

test: prerequisites packages testbed-tools helm promtool istio lint ## Everything CI runs: lints, unit tests, end-to-end tests on real clusters
	$(CARGO) test --workspace --no-fail-fast

lint: ## cargo fmt --check and clippy -D warnings
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## Unit tests only (no clusters)
	$(CARGO) test --workspace --lib --bins

e2e: packages testbed-tools helm promtool istio ## End-to-end tests only
	$(CARGO) test -p e2e --tests

prerequisites: ## Check Go, Rust (rust-version, rustfmt, clippy), curl and disk space; add missing Rust components through rustup
	@bash e2e/testbed/check-prerequisites.sh

packages: ## Install the Debian packages the tests use (lua5.1, faketime, podman, runc) when missing
	@bash e2e/testbed/install-packages.sh

testbed-tools: ## Build the test bed's Kubernetes, etcd and kwok binaries (cached by version)
	@bash e2e/testbed/build-tools.sh >/dev/null

helm: ## Build the pinned helm binary (cached by version)
	@bash e2e/testbed/build-helm.sh >/dev/null

promtool: ## Build the pinned promtool (Prometheus' rule checker and tester, for the chart's alerts; cached by version)
	@bash e2e/testbed/build-promtool.sh >/dev/null

istio: ## Build every pinned Istio version, 1.30 and 1.31 (pilot-discovery, istioctl, charts; cached by version)
	@. e2e/testbed/versions.env && for v in $$ISTIO_VERSIONS; do bash e2e/testbed/build-istio.sh $$v >/dev/null || exit 1; done

crds: ## Regenerate the CRD YAML from operator/src/api
	$(CARGO) run -q -p crd-gen > config/crd/meshfed.io_meshfederations.yaml
	cp config/crd/meshfed.io_meshfederations.yaml charts/meshfed-operator/crds/

bench: bench-testbed bench-operator bench-scale bench-failover bench-rotation bench-upgrade ## All benchmarks

bench-testbed: testbed-tools ## Fleet start time and memory for 1, 3 and 10 clusters
	$(CARGO) run -q -p e2e --bin testbed -- bench --sizes 1,3,10

bench-operator: testbed-tools helm istio ## apply->Ready, requests/reconcile, RSS (3, 10 members); meshfed vs manual Istio install
	@command -v openssl >/dev/null || { echo "bench-operator's manual path runs openssl: apt-get install -y openssl" >&2; exit 1; }
	$(CARGO) run -q -p e2e --bin bench -- --sizes 3,10

PLOT_VENV := $${XDG_CACHE_HOME:-$$HOME/.cache}/meshfed/plot-venv

bench-scale: testbed-tools ## 10, 25, 50 API-server-only members: apply->Ready, repair time, steady-state requests, RSS, a hung member; draws docs/img/convergence.png
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { echo "bench-scale draws its plot in a Python venv: apt-get install -y python3-venv" >&2; exit 1; }
	$(CARGO) run -q -p e2e --bin scale -- --sizes 10,25,50 --csv docs/img/bench-scale.csv
	@test -x $(PLOT_VENV)/bin/python || (python3 -m venv $(PLOT_VENV) && $(PLOT_VENV)/bin/pip install -q matplotlib==3.9.2)
	@mkdir -p docs/img
	$(PLOT_VENV)/bin/python e2e/bench/plot-scale.py docs/img/bench-scale.csv docs/img/convergence.png

bench-failover: testbed-tools helm istio ## Failure -> withdrawal and recovery -> restore with the real istiod, against grace and settle periods
	$(CARGO) test -q -p e2e --test failover -- --nocapture 2>&1 | grep FIGURE

bench-rotation: testbed-tools ## A full root rotation on 3 and 10 API-server-only members against its floor (the phase waits); cacerts writes per member per phase
	$(CARGO) run -q --release -p e2e --bin rotation -- --sizes 3,10

bench-upgrade: testbed-tools helm istio ## Istio 1.30 -> 1.31 by revision in waves on 3 and 10 members with real istiods, against its floor (the istiod start-ups); writes per member per wave
	$(CARGO) run -q --release -p e2e --bin upgrade -- --sizes 3,10

# The chart's default image.repository and tag (its appVersion, the crate version).
IMAGE ?= ghcr.io/meshfed/meshfed-operator:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

image: packages helm istio ## Build the operator image with podman (operator, helm, Istio charts); IMAGE=name:tag
	@bash e2e/image/build.sh $(IMAGE)

clean-testbed-cache: ## Delete all of ~/.cache/meshfed: test bed binaries, helm, promtool, Istio builds, the image build cache, the plot venv (next run rebuilds them, ~25 min on 2 cores)
	rm -rf $${XDG_CACHE_HOME:-$$HOME/.cache}/meshfed
