#!/usr/bin/env bash
# The manual path: what a platform team runs by hand to join N clusters into
# one Istio multi-primary mesh, the way Istio's documentation describes it.
# `make bench` times it against meshfed on an identical fleet (see
# docs/benchmarks.md, "Manual path comparison").
#
#   manual-path.sh KUBECONFIG_DIR CHARTS_DIR HELM ISTIOCTL KUBECTL OUT_DIR
#
# KUBECONFIG_DIR holds cluster-<i>.kubeconfig for i = 0..N-1; cluster-<i> is
# on network net-<i mod 2>. CHARTS_DIR is Istio's manifests/charts. OUT_DIR
# receives the CA files (Istio's tools/certs layout: root-cert.pem,
# root-key.pem, cluster-<i>/{ca-cert,ca-key,cert-chain,root-cert}.pem) and
# commands.log, every command run, one a line.
#
# Phases, each one cluster after another, as a person at a terminal would:
#   ca              openssl: one root, one intermediate per cluster
#   cacerts         namespace istio-system, its network label, Secret cacerts
#   charts          helm template base and istiod | kubectl apply --server-side
#   remote-secrets  istioctl create-remote-secret | kubectl apply, every ordered pair
#   wait            kubectl wait for deployment/istiod Available, every cluster
#
# stdout, one line per phase and a last one for the whole run:
#   phase <name> <seconds> <commands>
#   total <seconds> <commands>
# A command is one process started (openssl, cat, cp, helm, istioctl, kubectl); a
# pipe of two counts as two. Everything else goes to stderr.
set -euo pipefail

if [[ $# -ne 6 ]]; then
  echo "usage: $0 KUBECONFIG_DIR CHARTS_DIR HELM ISTIOCTL KUBECTL OUT_DIR" >&2
  exit 2
fi
kubeconfigs="$1" charts="$2" helm="$3" istioctl="$4" kubectl="$5" out="$6"

command -v openssl >/dev/null || {
  echo "openssl is required (Debian/Ubuntu: apt-get install openssl)" >&2
  exit 1
}
for tool in "$helm" "$istioctl" "$kubectl"; do
  [[ -x "$tool" ]] || { echo "$tool: not an executable" >&2; exit 1; }
done
[[ -f "$charts/base/Chart.yaml" && -f "$charts/istio-control/istio-discovery/Chart.yaml" ]] || {
  echo "$charts: no base and istio-control/istio-discovery charts" >&2
  exit 1
}

clusters=()
while [[ -f "$kubeconfigs/cluster-${#clusters[@]}.kubeconfig" ]]; do
  clusters+=("cluster-${#clusters[@]}")
done
[[ ${#clusters[@]} -gt 0 ]] || { echo "no cluster-0.kubeconfig in $kubeconfigs" >&2; exit 1; }

# Same mesh-wide settings as meshfed's defaults (MeshFederation meshId mesh1,
# trust domain cluster.local, ECDSA P-256, root 10 years, intermediates 1 year).
mesh_id=mesh1
trust_domain=cluster.local
root_days=3650
intermediate_days=365

mkdir -p "$out"
log="$out/commands.log"
: >"$log"

# Runs a command and records it; in a pipe each side records itself (appends
# from subshells land in the same file).
run() {
  printf '%q ' "$@" >>"$log"
  echo >>"$log"
  "$@"
}
kc() { run "$kubectl" --kubeconfig "$kubeconfigs/$1.kubeconfig" "${@:2}"; }
network() { echo "net-$(( ${1#cluster-} % 2 ))"; }

now() { date +%s.%N; }
commands() { wc -l <"$log" | tr -d ' '; }
start=$(now)
phase_start=$start
phase_commands=0
phase() {
  local t n
  t=$(now)
  n=$(commands)
  awk -v name="$1" -v a="$phase_start" -v b="$t" -v c=$((n - phase_commands)) \
    'BEGIN { printf "phase %-15s %8.3f %4d\n", name, b - a, c }'
  phase_start=$t
  phase_commands=$n
}

# 1. CA, after Istio's tools/certs (common.mk, Makefile.selfsigned.mk).
echo ">> ca: root and ${#clusters[@]} intermediates" >&2
cat >"$out/root-ca.conf" <<EOF
[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
[ req_dn ]
O = Istio
CN = Root CA
EOF
run openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout "$out/root-key.pem" -out "$out/root-cert.pem" -days "$root_days" \
  -config "$out/root-ca.conf" 2>/dev/null
for c in "${clusters[@]}"; do
  d="$out/$c"
  mkdir -p "$d"
  cat >"$d/intermediate.conf" <<EOF
[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
[ req_ext ]
subjectKeyIdentifier = hash
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign
subjectAltName = @san
[ san ]
DNS.1 = istiod.istio-system.svc
[ req_dn ]
O = Istio
CN = Intermediate CA
L = $c
EOF
  run openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$d/ca-key.pem" -out "$d/cluster-ca.csr" -config "$d/intermediate.conf" 2>/dev/null
  run openssl x509 -req -days "$intermediate_days" -in "$d/cluster-ca.csr" \
    -CA "$out/root-cert.pem" -CAkey "$out/root-key.pem" -CAcreateserial \
    -extensions req_ext -extfile "$d/intermediate.conf" -out "$d/ca-cert.pem" 2>/dev/null
  run cat "$d/ca-cert.pem" "$out/root-cert.pem" >"$d/cert-chain.pem"
  run cp "$out/root-cert.pem" "$d/root-cert.pem"
done
phase ca

# 2. Namespace, network label, cacerts, in every cluster.
for c in "${clusters[@]}"; do
  echo ">> cacerts: $c" >&2
  d="$out/$c"
  kc "$c" create namespace istio-system >&2
  kc "$c" label namespace istio-system "topology.istio.io/network=$(network "$c")" >&2
  kc "$c" create secret generic cacerts -n istio-system \
    --from-file="$d/ca-cert.pem" --from-file="$d/ca-key.pem" \
    --from-file="$d/root-cert.pem" --from-file="$d/cert-chain.pem" >&2
done
phase cacerts

# 3. Istio's base chart (CRDs) and istiod, rendered with the values meshfed
#    renders them with, applied server-side.
for c in "${clusters[@]}"; do
  echo ">> charts: $c" >&2
  run "$helm" template istio-base "$charts/base" --namespace istio-system --include-crds \
    --set defaultRevision=default |
    kc "$c" apply --server-side -f - >&2
  run "$helm" template istiod "$charts/istio-control/istio-discovery" --namespace istio-system \
    --set "global.meshID=$mesh_id" \
    --set "global.multiCluster.clusterName=$c" \
    --set "global.network=$(network "$c")" \
    --set "meshConfig.trustDomain=$trust_domain" \
    --set-string "pilot.env.ISTIO_MULTIROOT_MESH=true" |
    kc "$c" apply --server-side -f - >&2
done
phase charts

# 4. Endpoint discovery: for every ordered pair (A, B), B's remote secret in A.
#    istioctl creates (if missing) and reads a token Secret for
#    istio-reader-service-account in B, which the base chart installed.
for a in "${clusters[@]}"; do
  for b in "${clusters[@]}"; do
    [[ "$a" == "$b" ]] && continue
    echo ">> remote secret: $b -> $a" >&2
    run "$istioctl" create-remote-secret --kubeconfig "$kubeconfigs/$b.kubeconfig" --name "$b" |
      kc "$a" apply -f - >&2
  done
done
phase remote-secrets

# 5. istiod Available in every cluster.
for c in "${clusters[@]}"; do
  echo ">> wait: $c" >&2
  kc "$c" wait --for=condition=Available deployment/istiod -n istio-system --timeout=120s >&2
done
phase wait

awk -v a="$start" -v b="$(now)" -v c="$(commands)" \
  'BEGIN { printf "total %-15s %8.3f %4d\n", "", b - a, c }'
