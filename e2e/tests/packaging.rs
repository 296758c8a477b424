//! Packaging: the Helm chart, the kustomize tree in config/, and the Argo CD
//! health check.
//!
//! * the chart lints, its schema rejects bad values, and its values reach the
//!   rendered Deployment;
//! * `kubectl kustomize config/default` renders the same objects as `helm
//!   template` (names, namespaces, RBAC rules, the container);
//! * both render to objects a real API server accepts (server-side dry-run),
//!   and `helm install` brings the Deployment to Available under the
//!   restricted Pod Security Standard;
//! * the operator, authenticated as the chart's ServiceAccount (not admin),
//!   takes a two-member federation (itself a `local` member) to Ready and
//!   cleans it up, and is refused what the chart does not grant;
//! * deploy/argocd/health.lua gives the expected health for every fixture.
//!
//! Needs `helm` (built by e2e/testbed/build-helm.sh), the test bed's kubectl
//! (e2e/testbed/build-tools.sh) and `lua5.1` (`apt-get install lua5.1`).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use e2e::Fleet;
use e2e::chart::{RELEASE, chart_dir, documents, workspace};
use e2e::mesh::{
    OPERATOR_NAMESPACE, credentials_secret_name, federation, has_condition, local_member, member,
    poll, store_kubeconfig, token_kubeconfig, wait_for_federation,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use meshfed::api::MeshFederation;
use meshfed::controller::{Context, run as run_operator};
use meshfed::settings::Settings;
use serde::Deserialize;
use serde_json::{Value, json};

const FULLNAME: &str = "meshfed-operator";
const ISTIO_NAMESPACE: &str = "istio-system";

// ---------------------------------------------------------------------------
// Tools and rendering
// ---------------------------------------------------------------------------

/// A path the test bed's own lookup finds (async, in the e2e crate), for
/// these synchronous helpers: on a thread of its own, so that it works from
/// inside a test's runtime too.
fn looked_up(
    lookup: impl std::future::Future<Output = anyhow::Result<PathBuf>> + Send + 'static,
) -> PathBuf {
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .expect("a runtime")
            .block_on(lookup)
    })
    .join()
    .expect("the lookup thread")
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// helm at the pinned version (`e2e::istiod::helm`: `$MESHFED_HELM` or
/// e2e/testbed/build-helm.sh).
fn helm_path() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| looked_up(e2e::istiod::helm()))
}

/// The test bed's kubectl (kustomize built in), where the fleet finds its
/// binaries.
fn kubectl_path() -> &'static Path {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL
        .get_or_init(|| looked_up(async { Ok(e2e::fleet::tools::tools().await?.path("kubectl")) }))
}

fn helm(args: &[&str]) -> Result<String, String> {
    e2e::chart::helm(helm_path(), args)
}

/// kubectl in the workspace, `stdin` as its input (`e2e::chart::run`'s
/// runner): Ok(stdout), or Err(stdout + stderr).
fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    e2e::chart::run_with_stdin(kubectl_path(), args, &workspace(), stdin)
}

/// `helm template meshfed charts/meshfed-operator -n meshfed-system` plus `extra`.
fn helm_template(extra: &[&str]) -> String {
    e2e::chart::template(helm_path(), extra).unwrap_or_else(|e| panic!("{e}"))
}

fn kustomize(dir: &str) -> String {
    kubectl(&["kustomize", dir], None).unwrap_or_else(|e| panic!("{e}"))
}

/// kind/namespace/name, e.g. `Role/istio-system/meshfed-member`.
fn key(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap();
    // kustomize's namespace transformer does not know these kinds are
    // cluster-scoped and gives them the operator's namespace, which the API
    // server ignores.
    let cluster_scoped = matches!(
        kind,
        "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding"
    );
    let namespace = match cluster_scoped {
        true => "",
        false => obj["metadata"]["namespace"].as_str().unwrap_or(""),
    };
    format!(
        "{kind}/{namespace}/{}",
        obj["metadata"]["name"].as_str().unwrap()
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for o in objects {
        let k = key(&o);
        assert!(map.insert(k.clone(), o).is_none(), "{k} rendered twice");
    }
    map
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn container(objects: &[Value]) -> &Value {
    &find(objects, "Deployment", FULLNAME).expect("the Deployment")["spec"]["template"]["spec"]["containers"]
        [0]
}

fn args(objects: &[Value]) -> Vec<String> {
    container(objects)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Chart: lint, schema, values
// ---------------------------------------------------------------------------

#[test]
fn chart_lints_and_its_schema_rejects_bad_values() {
    let started = Instant::now();
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let lint = helm(&["lint", "--strict", chart]).unwrap_or_else(|e| panic!("{e}"));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    // Every optional template switched on lints too.
    helm(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "replicaCount=3,metrics.serviceMonitor.enabled=true,podDisruptionBudget.enabled=true,logJson=true",
    ])
    .unwrap_or_else(|e| panic!("{e}"));

    for (set, complaint) in [
        ("resync=5 minutes", "/resync"),
        ("resync=0s", "/resync"),
        ("memberTimeout=10", "/memberTimeout"),
        ("replicaCount=0", "/replicaCount"),
        ("replicas=2", "additional properties 'replicas'"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("image.digest=latest", "/image/digest"),
        ("metrics.port=80", "/metrics/port"),
        ("rbac.localMember=maybe", "/rbac/localMember"),
        (
            "leaderElection.leaseName=Not_A_Name",
            "/leaderElection/leaseName",
        ),
        ("serviceAccount.name=Bad Name", "/serviceAccount/name"),
        (
            "podDisruptionBudget.minAvailable=lots",
            "/podDisruptionBudget/minAvailable",
        ),
    ] {
        let err = helm(&["template", "x", chart, "--set", set])
            .expect_err(&format!("--set {set} must be rejected"));
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(complaint),
            "--set {set}: expected a schema error about {complaint}, got:\n{err}"
        );
    }
    let err = helm(&[
        "template",
        "x",
        chart,
        "--set",
        "podDisruptionBudget.enabled=true,podDisruptionBudget.maxUnavailable=1",
    ])
    .expect_err("minAvailable and maxUnavailable together");
    assert!(
        err.contains("set only one of minAvailable and maxUnavailable"),
        "{err}"
    );

    // Defaults: one replica, no leader election, Recreate so two pods never
    // reconcile at once; only the default objects.
    let defaults = documents(&helm_template(&[]));
    assert_eq!(
        args(&defaults),
        [
            "--metrics-addr=0.0.0.0:8080",
            "--resync=60s",
            "--member-timeout=10s"
        ]
    );
    let deployment = find(&defaults, "Deployment", FULLNAME).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        container(&defaults)["image"],
        "ghcr.io/meshfed/meshfed-operator:0.1.0",
        "image tag defaults to appVersion"
    );
    for kind in ["ServiceMonitor", "PodDisruptionBudget"] {
        assert!(
            !defaults.iter().any(|o| o["kind"] == kind),
            "{kind} is opt-in"
        );
    }
    assert!(
        find(&defaults, "ClusterRole", "meshfed-member").is_none(),
        "the operator's cluster is not a member by default"
    );

    // More replicas turn leader election on, and the rollout keeps one leading.
    let ha = documents(&helm_template(&[
        "--set",
        "replicaCount=2,resync=5m,memberTimeout=3s,logJson=true,leaderElection.leaseDuration=20s",
    ]));
    assert_eq!(
        args(&ha),
        [
            "--metrics-addr=0.0.0.0:8080",
            "--resync=5m",
            "--member-timeout=3s",
            "--leader-elect",
            "--leader-lease=meshfed-operator-leader",
            "--leader-lease-duration=20s",
            "--log-json"
        ]
    );
    let deployment = find(&ha, "Deployment", FULLNAME).unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    // Or it is asked for with one replica.
    let forced = documents(&helm_template(&["--set", "leaderElection.enabled=true"]));
    assert!(args(&forced).contains(&"--leader-elect".to_string()));

    // The Lease Role is limited to the configured Lease.
    let renamed = documents(&helm_template(&["--set", "leaderElection.leaseName=other"]));
    let lease_role = find(&renamed, "Role", "meshfed-operator-leader-election").unwrap();
    assert_eq!(lease_role["rules"][1]["resourceNames"], json!(["other"]));

    // Optional objects.
    let extras = documents(&helm_template(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom",
        "--set",
        "podDisruptionBudget.enabled=true,replicaCount=2,metrics.port=9090",
    ]));
    let sm = find(&extras, "ServiceMonitor", FULLNAME).expect("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let pdb = find(&extras, "PodDisruptionBudget", FULLNAME).expect("PDB");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(container(&extras)["ports"][0]["containerPort"], 9090);
    assert_eq!(
        find(&extras, "Service", "meshfed-operator-metrics").unwrap()["spec"]["ports"][0]["port"],
        9090
    );
    assert!(args(&extras).contains(&"--metrics-addr=0.0.0.0:9090".to_string()));

    // By default (the operator's cluster is not a member), no member-side
    // permissions at all.
    let remote_only = &defaults;
    let member_objects: Vec<String> = remote_only
        .iter()
        .filter(|o| serde_json::to_string(o).unwrap().contains("meshfed-member"))
        .map(key)
        .collect();
    assert!(member_objects.is_empty(), "{member_objects:?}");
    assert!(
        !remote_only
            .iter()
            .any(|o| o["metadata"]["namespace"] == ISTIO_NAMESPACE),
        "nothing in istio-system without rbac.localMember"
    );

    // `helm install meshfed` and `helm install meshfed-operator` both name
    // things meshfed-operator; other release names prefix it.
    let other = helm(&["template", "prod", chart]).unwrap();
    assert!(other.contains("name: prod-meshfed-operator"));
    eprintln!("chart lint/schema/values: {:?}", started.elapsed());
}

/// A values file for `helm template -f` (kept until the handle is dropped).
fn values_file(yaml: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(yaml.as_bytes()).unwrap();
    file
}

/// What docs/install.md gives for OpenShift's restricted-v2 SCC, which
/// assigns the UID and GID itself: with nulls, the template leaves them out.
const OPENSHIFT_VALUES: &str = "\
podSecurityContext:
  runAsUser: null
  runAsGroup: null
securityContext:
  runAsUser: null
  runAsGroup: null
";

/// An Istio chart set mounted beside the image's, extra flags and
/// environment, and the NetworkPolicy with egress rules.
const EXTRAS_VALUES: &str = "\
extraArgs: [--stall-timeout=15m]
extraEnv:
  - name: RUST_LOG
    value: info,meshfed=debug
volumes:
  - name: istio-1-32
    persistentVolumeClaim: {claimName: istio-charts-1-32, readOnly: true}
volumeMounts:
  - name: istio-1-32
    mountPath: /charts/1.32
    readOnly: true
networkPolicy:
  enabled: true
  metricsFrom:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: monitoring}
    podSelector:
      matchLabels: {app.kubernetes.io/name: prometheus}
  egress:
    - {}
";

#[test]
fn chart_values_reach_the_pod_and_the_network_policy() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for (set, complaint) in [
        ("extraArgs={stall-timeout=5m}", "/extraArgs/0"),
        ("extraEnv[0].value=x", "/extraEnv/0"),
        ("volumes[0].name=tmp", "/volumes/0/name"),
        ("volumeMounts[0].name=charts", "/volumeMounts/0"),
        (
            "podSecurityContext.runAsUser=root",
            "/podSecurityContext/runAsUser",
        ),
        ("securityContext.readOnlyRootFS=true", "/securityContext"),
        ("networkPolicy.enabled=maybe", "/networkPolicy/enabled"),
        (
            "networkPolicy.metricsFrom.podSelector.app=x",
            "/networkPolicy/metricsFrom/podSelector",
        ),
    ] {
        let err = helm(&["template", "x", chart, "--set", set])
            .expect_err(&format!("--set {set} must be rejected"));
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(complaint),
            "--set {set}: expected a schema error about {complaint}, got:\n{err}"
        );
    }

    // Defaults: the restricted settings as the image's user, no NetworkPolicy.
    let defaults = documents(&helm_template(&[]));
    let pod = &find(&defaults, "Deployment", FULLNAME).unwrap()["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        container(&defaults)["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
               "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert!(!defaults.iter().any(|o| o["kind"] == "NetworkPolicy"));

    // A null drops a default, from a values file or --set, and leaves the rest.
    let openshift = values_file(OPENSHIFT_VALUES);
    for args in [
        vec!["-f", openshift.path().to_str().unwrap()],
        vec![
            "--set",
            "podSecurityContext.runAsUser=null,podSecurityContext.runAsGroup=null",
            "--set",
            "securityContext.runAsUser=null,securityContext.runAsGroup=null",
        ],
    ] {
        let objects = documents(&helm_template(&args));
        let pod = &find(&objects, "Deployment", FULLNAME).unwrap()["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"],
            json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}),
            "{args:?}"
        );
        let sc = &container(&objects)["securityContext"];
        assert_eq!(
            (&sc["runAsUser"], &sc["runAsGroup"], &sc["runAsNonRoot"]),
            (&Value::Null, &Value::Null, &json!(true)),
            "{args:?}: {sc}"
        );
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
        assert_eq!(sc["readOnlyRootFilesystem"], true);
    }
    // A map left empty goes too (an empty seccompProfile is invalid).
    let objects = documents(&helm_template(&[
        "--set",
        "securityContext.seccompProfile.type=null",
    ]));
    assert!(
        container(&objects)["securityContext"]
            .get("seccompProfile")
            .is_none()
    );

    // Extras are appended to what the chart sets.
    let extras = values_file(EXTRAS_VALUES);
    let objects = documents(&helm_template(&["-f", extras.path().to_str().unwrap()]));
    assert_eq!(
        args(&objects),
        [
            "--metrics-addr=0.0.0.0:8080",
            "--resync=60s",
            "--member-timeout=10s",
            "--stall-timeout=15m"
        ]
    );
    let c = container(&objects);
    let env: Vec<&str> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["MESHFED_NAMESPACE", "POD_NAME", "RUST_LOG"]);
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "tmp", "mountPath": "/tmp"},
               {"name": "istio-1-32", "mountPath": "/charts/1.32", "readOnly": true}])
    );
    let pod = &find(&objects, "Deployment", FULLNAME).unwrap()["spec"]["template"]["spec"];
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["tmp", "istio-1-32"]);

    // The NetworkPolicy: the operator's pods, ingress to the metrics port from
    // the given peers only; egress restricted only when rules are given.
    let np = find(&objects, "NetworkPolicy", FULLNAME).expect("NetworkPolicy");
    assert_eq!(np["metadata"]["namespace"], OPERATOR_NAMESPACE);
    let selector = &find(&objects, "Deployment", FULLNAME).unwrap()["spec"]["selector"];
    assert_eq!(np["spec"]["podSelector"], *selector);
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{
            "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }],
            "ports": [{"port": "metrics", "protocol": "TCP"}],
        }])
    );
    assert_eq!(np["spec"]["egress"], json!([{}]));
    let open = documents(&helm_template(&["--set", "networkPolicy.enabled=true"]));
    let np = find(&open, "NetworkPolicy", FULLNAME).unwrap();
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert!(np["spec"].get("egress").is_none());
    assert_eq!(
        np["spec"]["ingress"][0]["from"],
        json!([{"namespaceSelector": {}, "podSelector": {}}])
    );

    // Every value switched on lints.
    let lint = helm(&[
        "lint",
        "--strict",
        chart,
        "-f",
        extras.path().to_str().unwrap(),
        "-f",
        openshift.path().to_str().unwrap(),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
}

/// The operator's own rules hold no wildcard, and the rules a member needs
/// mirror the reader role meshfed creates (RBAC escalation prevention).
#[test]
fn rbac_is_least_privilege_and_covers_the_reader_role() {
    let objects = documents(&helm_template(&["--set", "rbac.localMember=true"]));
    for (kind, name) in [
        ("ClusterRole", "meshfed-operator"),
        ("Role", "meshfed-operator"),
        ("Role", "meshfed-operator-leader-election"),
        ("Role", "meshfed-operator-events"),
        ("Role", "meshfed-member"),
    ] {
        let role = find(&objects, kind, name).unwrap_or_else(|| panic!("{kind} {name}"));
        let text = serde_json::to_string(&role["rules"]).unwrap();
        assert!(!text.contains('*'), "{kind} {name} has a wildcard: {text}");
    }
    // Secrets are written only in the operator's namespace and istio-system;
    // cluster-wide they are only read, by the mirror of the reader role
    // (istiod watches Secrets in its peers).
    for o in objects.iter().filter(|o| o["kind"] == "ClusterRole") {
        for rule in o["rules"].as_array().unwrap() {
            let core = rule["apiGroups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == "");
            let resources = rule["resources"].as_array().unwrap();
            let verbs = rule["verbs"].as_array().unwrap();
            let secrets = core && resources.iter().any(|r| r == "secrets" || r == "*");
            assert!(
                !secrets
                    || verbs
                        .iter()
                        .all(|v| v == "get" || v == "list" || v == "watch"),
                "{} may change Secrets cluster-wide",
                key(o)
            );
        }
    }
    let events = find(&objects, "Role", "meshfed-operator-events").unwrap();
    assert_eq!(events["metadata"]["namespace"], "default");

    // Every rule of the reader role must be held by the member ClusterRole.
    let member: Vec<k8s_openapi::api::rbac::v1::PolicyRule> = serde_json::from_value(
        find(&objects, "ClusterRole", "meshfed-member").unwrap()["rules"].clone(),
    )
    .unwrap();
    let reader = meshfed::render::render_reader_identity("prod");
    for rule in reader.cluster_role.rules.unwrap() {
        for group in rule.api_groups.clone().unwrap() {
            for resource in rule.resources.clone().unwrap() {
                for verb in &rule.verbs {
                    let held = member.iter().any(|m| {
                        m.resource_names.is_none()
                            && m.api_groups.as_ref().unwrap().contains(&group)
                            && m.resources.as_ref().unwrap().contains(&resource)
                            && m.verbs.contains(verb)
                    });
                    assert!(
                        held,
                        "meshfed-member lacks {verb} {group}/{resource}, which the reader role grants"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// kustomize == helm
// ---------------------------------------------------------------------------

/// What must agree between kustomize and Helm for one object (everything but
/// labels and annotations Helm adds).
fn essence(obj: &Value) -> Value {
    match obj["kind"].as_str().unwrap() {
        "ClusterRole" | "Role" => obj["rules"].clone(),
        "ClusterRoleBinding" | "RoleBinding" => {
            json!({"roleRef": obj["roleRef"], "subjects": obj["subjects"]})
        }
        "Deployment" => {
            let spec = &obj["spec"];
            let pod = &spec["template"]["spec"];
            json!({
                "replicas": spec["replicas"],
                "strategy": spec["strategy"],
                "selector": spec["selector"],
                "podLabels": {
                    "app.kubernetes.io/name": spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
                    "app.kubernetes.io/instance": spec["template"]["metadata"]["labels"]["app.kubernetes.io/instance"],
                },
                "serviceAccountName": pod["serviceAccountName"],
                "automountServiceAccountToken": pod["automountServiceAccountToken"],
                "podSecurityContext": pod["securityContext"],
                "volumes": pod["volumes"],
                "containers": pod["containers"],
            })
        }
        "Service" => obj["spec"].clone(),
        "CustomResourceDefinition" => obj["spec"].clone(),
        "ServiceAccount" => json!({}),
        "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding" => obj["spec"].clone(),
        other => panic!("unexpected kind {other}"),
    }
}

/// `kubectl kustomize dir` and `helm template --include-crds helm_args`
/// render the same objects (kustomize also ships the Namespace); Helm's
/// objects by key.
fn assert_kustomize_renders_what_helm_renders(
    dir: &str,
    helm_args: &[&str],
) -> BTreeMap<String, Value> {
    let started = Instant::now();
    let kustomized = by_key(documents(&kustomize(dir)));
    let helmed = by_key(documents(&helm_template(
        &[&["--include-crds"], helm_args].concat(),
    )));

    let k_keys: BTreeSet<_> = kustomized.keys().cloned().collect();
    let h_keys: BTreeSet<_> = helmed.keys().cloned().collect();
    // Helm creates the namespace itself (--create-namespace); kustomize ships it.
    let only_kustomize: Vec<_> = k_keys.difference(&h_keys).collect();
    let only_helm: Vec<_> = h_keys.difference(&k_keys).collect();
    assert_eq!(
        only_kustomize,
        ["Namespace//meshfed-system"],
        "objects only {dir} renders"
    );
    assert!(
        only_helm.is_empty(),
        "objects only Helm {helm_args:?} renders: {only_helm:?}"
    );

    for (k, h) in &helmed {
        let kz = &kustomized[k];
        assert_eq!(
            essence(kz),
            essence(h),
            "{k} differs between {dir} and the chart {helm_args:?}"
        );
    }
    eprintln!(
        "{} objects agree; {dir} == helm {helm_args:?} in {:?}",
        helmed.len(),
        started.elapsed()
    );
    helmed
}

#[test]
fn kustomize_default_renders_what_helm_template_renders() {
    let helmed = assert_kustomize_renders_what_helm_renders("config/default", &[]);
    assert!(
        !helmed.keys().any(|k| k.contains("meshfed-member")),
        "no member roles by default"
    );
    let helmed = assert_kustomize_renders_what_helm_renders(
        "config/local-member",
        &["--set", "rbac.localMember=true"],
    );

    // The member roles for remote clusters are the chart's member roles.
    let member = by_key(documents(&kustomize("config/member-rbac")));
    for k in [
        "ClusterRole//meshfed-member",
        "Role/istio-system/meshfed-member",
        "ValidatingAdmissionPolicy//meshfed-token-secrets",
        "ValidatingAdmissionPolicyBinding//meshfed-token-secrets",
        "ValidatingAdmissionPolicy//meshfed-member-deployments",
        "ValidatingAdmissionPolicyBinding//meshfed-member-deployments",
    ] {
        assert_eq!(
            essence(&member[k]),
            essence(&helmed[k]),
            "{k}: config/member-rbac and the chart disagree"
        );
    }
    let binding = &member["ClusterRoleBinding//meshfed-member"];
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "meshfed-member", "namespace": "istio-system"}])
    );
    let sample = documents(&kustomize("config/samples"));
    assert_eq!(sample.len(), 1);
    let fed: MeshFederation = serde_json::from_value(sample[0].clone()).unwrap();
    assert_eq!(fed.metadata.name.as_deref(), Some("prod"));
    let names: Vec<_> = fed.spec.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["east", "west", "central"]);
}

// ---------------------------------------------------------------------------
// Argo CD health check
// ---------------------------------------------------------------------------

/// A Lua string literal for arbitrary text (bytes outside printable ASCII as
/// `\ddd`, which Lua 5.1 understands).
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

/// A Lua table constructor for a JSON value, as Argo CD hands `obj` to the script.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs `script` on `obj` with lua5.1 the way Argo CD does: `obj` global, the
/// script returns the health table. Returns (status, message).
fn lua_health(script: &Path, obj: &Value) -> (String, String) {
    let program = format!(
        "obj = {}\nlocal check = assert(loadfile({}))\nlocal hs = check()\nio.write(tostring(hs.status), \"\\0\", tostring(hs.message))\n",
        lua_value(obj),
        lua_string(script.to_str().unwrap())
    );
    let mut child = match Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "lua5.1 is not installed: `apt-get install -y lua5.1` (Argo CD runs health \
             checks in a Lua 5.1, so the check is tested with one)"
        ),
        Err(e) => panic!("starting lua5.1: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(program.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "lua5.1 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\0').expect("status and message");
    (status.into(), message.into())
}

#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    input_path: String,
    health_status: ExpectedHealth,
}

#[derive(Deserialize)]
struct ExpectedHealth {
    status: String,
    message: String,
}

#[test]
fn argocd_health_check_gives_the_expected_health_for_every_fixture() {
    let dir = workspace().join("deploy/argocd");
    let script = dir.join("health.lua");
    let tests: HealthTests =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap())
            .unwrap();
    // Every fixture is listed, so none sits there untested.
    let listed: BTreeSet<String> = tests.tests.iter().map(|t| t.input_path.clone()).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir.join("testdata"))
        .unwrap()
        .map(|e| format!("testdata/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(listed, on_disk, "health_test.yaml must list every fixture");
    let mut seen = BTreeSet::new();
    let mut ready_reasons = BTreeSet::new();
    for t in &tests.tests {
        let text = std::fs::read_to_string(dir.join(&t.input_path)).unwrap();
        let obj: Value = serde_yaml::from_str(&text).unwrap();
        // Fixtures are real MeshFederations, not free-form YAML.
        let fed = serde_json::from_value::<MeshFederation>(obj.clone())
            .unwrap_or_else(|e| panic!("{} is not a MeshFederation: {e}", t.input_path));
        let conditions = fed.status.iter().flat_map(|s| &s.conditions);
        ready_reasons.extend(
            conditions
                .filter(|c| c.type_ == "Ready" && c.status != "Unknown")
                .map(|c| c.reason.clone()),
        );
        let (status, message) = lua_health(&script, &obj);
        assert_eq!(
            (status.as_str(), message.as_str()),
            (
                t.health_status.status.as_str(),
                t.health_status.message.as_str()
            ),
            "{}",
            t.input_path
        );
        seen.insert(status);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["Degraded".into(), "Healthy".into(), "Progressing".into()])
    );
    // A fixture for every reason meshfed can give Ready, so a new one is
    // given its health here before it ships.
    let reasons: BTreeSet<String> = meshfed::fleet::status::READY_REASONS
        .iter()
        .map(|r| r.as_str().to_string())
        .collect();
    assert_eq!(
        ready_reasons, reasons,
        "the fixtures' Ready reasons must be READY_REASONS (operator/src/fleet/status.rs)"
    );

    // The ConfigMap snippet carries the script verbatim under Argo CD's key.
    let cm: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("argocd-cm-patch.yaml")).unwrap())
            .unwrap();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    assert_eq!(
        cm["data"]["resource.customizations.health.meshfed.io_MeshFederation"]
            .as_str()
            .expect("health key"),
        std::fs::read_to_string(&script).unwrap(),
        "argocd-cm-patch.yaml must embed health.lua verbatim"
    );
}

// ---------------------------------------------------------------------------
// On real API servers
// ---------------------------------------------------------------------------

async fn ensure_namespace(client: &Client, name: &str, labels: Value) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }))?;
    Api::<Namespace>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("meshfed-packaging-test").force(),
            &Patch::Apply(&ns),
        )
        .await?;
    Ok(())
}

/// The operator namespace under the restricted Pod Security Standard, so a
/// pod that breaks it is refused; and istio-system (the member Role lives there).
async fn prepare_namespaces(client: &Client) -> Result<()> {
    ensure_namespace(
        client,
        OPERATOR_NAMESPACE,
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await?;
    ensure_namespace(client, ISTIO_NAMESPACE, json!({})).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn helm_install(kubeconfig: &Path, extra: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

async fn wait_crd_established(client: &Client) -> Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let feds = Api::<MeshFederation>::all(client.clone());
    poll(Duration::from_secs(30), "CRD established", || {
        let (crds, feds) = (crds.clone(), feds.clone());
        async move {
            let Some(crd) = crds.get_opt("meshfederations.meshfed.io").await? else {
                return Ok(false);
            };
            let established = e2e::mesh::crd_established(&crd);
            Ok(established && feds.list(&ListParams::default()).await.is_ok())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_and_kustomize_apply_to_a_real_api_server_and_the_operator_becomes_available()
-> Result<()> {
    let fleet = Fleet::start(1).await?;
    let cluster = fleet.cluster(0);
    let client = cluster.client();
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_string();
    // Warm the tool caches outside the timed part.
    blocking(|| {
        helm_path();
        kubectl_path();
    })
    .await;

    // A local member without istio-system: the chart says what to do, and
    // installs nothing.
    let kc = kubeconfig.clone();
    let refused = blocking(move || {
        helm_install(
            Path::new(&kc),
            &["--create-namespace", "--set", "rbac.localMember=true"],
        )
    })
    .await
    .expect_err("install without istio-system must fail");
    ensure!(
        refused.contains("kubectl create namespace istio-system")
            && refused.contains("whose cluster is not a member"),
        "{refused}"
    );
    // Helm installs crds/ before rendering, so only the CRD may be there.
    ensure!(
        Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE)
            .get_opt(FULLNAME)
            .await?
            .is_none(),
        "a refused install creates no operator"
    );
    prepare_namespaces(&client).await?;

    // Server-side dry-run: the API server validates every object (schemas,
    // RBAC references, CRD structure), nothing is stored.
    let started = Instant::now();
    let kc = kubeconfig.clone();
    blocking(move || -> Result<(), String> {
        let dry_run = |yaml: &str, what: &str| -> Result<(), String> {
            let out = kubectl(
                &[
                    "apply",
                    "--kubeconfig",
                    &kc,
                    "--server-side",
                    "--field-manager=packaging-test",
                    "--dry-run=server",
                    "-f",
                    "-",
                ],
                Some(yaml),
            )
            .map_err(|e| format!("{what}: {e}"))?;
            let applied = out
                .lines()
                .filter(|l| l.contains("(server dry run)"))
                .count();
            let expected = documents(yaml).len();
            if applied != expected {
                return Err(format!(
                    "{what}: {applied} of {expected} objects accepted:\n{out}"
                ));
            }
            Ok(())
        };
        dry_run(
            &helm_template(&["--include-crds"]),
            "helm template (defaults)",
        )?;
        dry_run(
            &helm_template(&[
                "--set",
                "replicaCount=2,podDisruptionBudget.enabled=true,logJson=true",
            ]),
            "helm template (HA)",
        )?;
        let (openshift, extras) = (values_file(OPENSHIFT_VALUES), values_file(EXTRAS_VALUES));
        dry_run(
            &helm_template(&[
                "-f",
                openshift.path().to_str().unwrap(),
                "-f",
                extras.path().to_str().unwrap(),
            ]),
            "helm template (OpenShift security contexts, extras, NetworkPolicy)",
        )?;
        dry_run(&kustomize("config/default"), "kustomize config/default")?;
        dry_run(
            &kustomize("config/local-member"),
            "kustomize config/local-member",
        )?;
        dry_run(
            &kustomize("config/member-rbac"),
            "kustomize config/member-rbac",
        )
    })
    .await
    .map_err(anyhow::Error::msg)?;
    eprintln!("server-side dry-runs: {:?}", started.elapsed());

    // A real install; kwok plays the kubelet, so the image need not exist, but
    // the pod must pass the restricted Pod Security admission.
    let started = Instant::now();
    let kc = kubeconfig.clone();
    let out = blocking(move || helm_install(Path::new(&kc), &["--wait", "--timeout", "120s"]))
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(out.contains("STATUS: deployed"), "{out}");
    ensure!(out.contains("NOTES:"), "NOTES.txt is shown:\n{out}");
    let deployments = Api::<Deployment>::namespaced(client.clone(), OPERATOR_NAMESPACE);
    poll(Duration::from_secs(60), "Deployment Available", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get(FULLNAME).await?;
            Ok(d.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True"))
        }
    })
    .await?;
    eprintln!("helm install to Available: {:?}", started.elapsed());
    // ...and that admission is really on: a plain pod is refused there.
    let kc = kubeconfig.clone();
    let refused = blocking(move || {
        kubectl(
            &[
                "run",
                "plain",
                "--image=busybox",
                "--namespace",
                OPERATOR_NAMESPACE,
                "--kubeconfig",
                &kc,
                "--dry-run=server",
            ],
            None,
        )
    })
    .await
    .expect_err("a pod without the restricted securityContext must be refused");
    ensure!(refused.contains("violates PodSecurity"), "{refused}");

    // Helm installed the CRD from crds/: the sample federation validates
    // against it (OpenAPI schema and CEL rules) on the server.
    wait_crd_established(&client).await?;
    let kc = kubeconfig.clone();
    blocking(move || {
        kubectl(
            &[
                "apply",
                "--kubeconfig",
                &kc,
                "--dry-run=server",
                "-f",
                "config/samples/meshfederation.yaml",
            ],
            None,
        )
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // The upgrade docs/install.md gives: the CRD by hand (Helm never
    // upgrades crds/), over the one Helm installed, then the chart.
    let kc = kubeconfig.clone();
    blocking(move || -> Result<(), String> {
        let out = kubectl(
            &[
                "apply",
                "--kubeconfig",
                &kc,
                "-f",
                "charts/meshfed-operator/crds/",
            ],
            None,
        )?;
        if !out.contains("meshfederations.meshfed.io") {
            return Err(out);
        }
        let chart = chart_dir();
        helm(&[
            "upgrade",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--kubeconfig",
            &kc,
        ])
        .map(drop)
    })
    .await
    .map_err(anyhow::Error::msg)?;
    wait_crd_established(&client).await?;

    // Uninstall removes the cluster-scoped objects too.
    let kc = kubeconfig.clone();
    blocking(move || {
        helm(&[
            "uninstall",
            RELEASE,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--kubeconfig",
            &kc,
            "--wait",
        ])
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let roles = Api::<ClusterRole>::all(client.clone());
    ensure!(roles.get_opt(FULLNAME).await?.is_none());
    ensure!(roles.get_opt("meshfed-member").await?.is_none());
    Ok(())
}

/// A client for `cluster` authenticated with a bound token of the chart's
/// ServiceAccount (as the operator's pod would be).
async fn service_account_config(cluster: &e2e::Cluster, admin: &Client) -> Result<Config> {
    let yaml = token_kubeconfig(cluster, admin, OPERATOR_NAMESPACE, FULLNAME).await?;
    let mut config = Config::from_custom_kubeconfig(
        Kubeconfig::from_yaml(&yaml)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    config.connect_timeout = Some(Duration::from_secs(5));
    Ok(config)
}

fn is_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(e)) if e.code == 403)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_with_only_the_charts_rbac_takes_a_two_member_federation_to_ready() -> Result<()> {
    let fleet = Fleet::start(2).await?;
    let _logs = fleet.log_guard();
    let (host, remote) = (fleet.cluster(0), fleet.cluster(1));
    let admin = host.client();
    prepare_namespaces(&admin).await?;
    let kc = host.kubeconfig_path().to_path_buf();
    let started = Instant::now();
    blocking(move || helm_install(&kc, &["--set", "rbac.localMember=true"]))
        .await
        .map_err(anyhow::Error::msg)?;
    wait_crd_established(&admin).await?;
    eprintln!("helm install: {:?}", started.elapsed());
    // cluster-1 is reached as a user would set it up: `kubectl apply -k
    // config/member-rbac` there, and a token of that identity in the
    // credentials Secret. cluster-0 is the operator's own cluster, reached
    // with the operator's identity.
    let remote_admin = remote.client();
    ensure_namespace(&remote_admin, ISTIO_NAMESPACE, json!({})).await?;
    let remote_kc = remote.kubeconfig_path().to_str().unwrap().to_string();
    blocking(move || {
        kubectl(
            &[
                "--kubeconfig",
                &remote_kc,
                "apply",
                "-k",
                "config/member-rbac",
            ],
            None,
        )
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let member_kubeconfig =
        token_kubeconfig(remote, &remote_admin, ISTIO_NAMESPACE, "meshfed-member").await?;
    store_kubeconfig(&admin, &credentials_secret_name(remote), &member_kubeconfig).await?;

    let config = service_account_config(host, &admin).await?;
    let sa = Client::try_from(config.clone())?;

    // Refused what the chart does not grant. With `rbac.localMember` the
    // operator reads Secrets cluster-wide, because it must hold what it grants
    // the reader (istiod watches Secrets in its peers); it never writes them
    // outside its own namespace and istio-system.
    let stray = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("meshfed-must-not".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    for ns in ["default", "kube-system"] {
        ensure!(
            is_forbidden(
                Api::<Secret>::namespaced(sa.clone(), ns)
                    .create(&kube::api::PostParams::default(), &stray)
                    .await
            ),
            "the operator must not create Secrets in {ns}"
        );
    }
    ensure!(
        is_forbidden(
            Api::<Secret>::namespaced(sa.clone(), "kube-system")
                .delete("anything", &Default::default())
                .await
        ),
        "the operator must not delete Secrets in kube-system"
    );
    ensure!(
        is_forbidden(
            Api::<Lease>::namespaced(sa.clone(), OPERATOR_NAMESPACE)
                .get_opt("someone-elses-lease")
                .await
        ),
        "the Lease Role is limited to meshfed-operator-leader"
    );
    ensure!(
        is_forbidden(
            Api::<Deployment>::namespaced(sa.clone(), OPERATOR_NAMESPACE)
                .list(&ListParams::default())
                .await
        ),
        "the operator has no business with Deployments"
    );
    // Granted: its credentials Secret, and leader election on its Lease.
    ensure!(
        Api::<Secret>::namespaced(sa.clone(), OPERATOR_NAMESPACE)
            .get_opt(&credentials_secret_name(remote))
            .await?
            .is_some()
    );
    let elector = meshfed::leader::LeaderElector::new(
        sa.clone(),
        OPERATOR_NAMESPACE,
        "meshfed-operator-leader",
        "packaging-test".into(),
        Duration::from_secs(15),
    );
    tokio::time::timeout(Duration::from_secs(20), elector.acquire())
        .await
        .context("acquiring the leader Lease as the operator's ServiceAccount")?;
    elector.release().await;
    let lease = Api::<Lease>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
        .get("meshfed-operator-leader")
        .await?;
    ensure!(
        lease.spec.and_then(|s| s.holder_identity).is_none(),
        "release (update) went through"
    );

    // The operator in this process, as the ServiceAccount.
    let settings = Settings {
        namespace: OPERATOR_NAMESPACE.into(),
        resync: Duration::from_secs(2),
        member_timeout: Duration::from_secs(5),
        ..Settings::new(OPERATOR_NAMESPACE)
    };
    let ctx = Context::new(sa.clone(), config, settings)?;
    let operator = AbortOnDrop(tokio::spawn(run_operator(ctx)));

    let fed = federation(
        "prod",
        vec![local_member(host, "net-a"), member(remote, "net-b")],
    );
    let started = Instant::now();
    Api::<MeshFederation>::all(admin.clone())
        .create(&PostParams::default(), &fed)
        .await?;
    let ready = wait_for_federation(&admin, "prod", Duration::from_secs(90), "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    eprintln!(
        "2-member federation Ready as the chart's ServiceAccount in {:?}",
        started.elapsed()
    );
    let status = ready.status.unwrap();
    ensure!(status.ready_members == 2, "{status:?}");
    // The operator's own cluster is a member here: peers may read what it
    // keeps, and the status says so (by name, with the fix).
    let exposed = wait_for_federation(
        &admin,
        "prod",
        Duration::from_secs(30),
        "CredentialsExposed",
        |f| has_condition(f, "CredentialsExposed", "True"),
    )
    .await?;
    let c = e2e::mesh::condition(&exposed, "CredentialsExposed").unwrap();
    ensure!(c.reason == "OperatorClusterIsMember", "{c:?}");
    for part in [
        format!("{OPERATOR_NAMESPACE}/prod-root-ca"),
        format!("{OPERATOR_NAMESPACE}/{}", credentials_secret_name(remote)),
        "not a member".to_string(),
    ] {
        ensure!(c.message.contains(&part), "{part}: {}", c.message);
    }

    // What the operator's identity did in its own cluster (member side) and
    // in the operator namespace.
    for (cluster, peer) in [(host, remote), (remote, host)] {
        let secrets = Api::<Secret>::namespaced(cluster.client(), ISTIO_NAMESPACE);
        ensure!(secrets.get_opt("cacerts").await?.is_some());
        ensure!(
            secrets
                .get_opt(&format!("istio-remote-secret-{}", peer.name()))
                .await?
                .is_some()
        );
    }
    ensure!(
        Api::<ClusterRole>::all(admin.clone())
            .get_opt("meshfed-reader-prod")
            .await?
            .is_some(),
        "reader ClusterRole created in the local member (no escalation error)"
    );
    ensure!(
        Api::<Secret>::namespaced(admin.clone(), OPERATOR_NAMESPACE)
            .get_opt("prod-root-ca")
            .await?
            .is_some()
    );
    // The member identity of config/member-rbac in cluster-1, tried for
    // what it must not do: change any RBAC object but meshfed's reader, or
    // get a token for any account but the reader and itself.
    member_identity_is_least_privilege(&remote_admin, &member_kubeconfig).await?;

    // Events about the cluster-scoped federation land in `default`.
    let events = Api::<Event>::namespaced(admin.clone(), "default");
    poll(Duration::from_secs(20), "an Event from meshfed", || {
        let events = events.clone();
        async move {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .any(|e| {
                    e.reporting_controller.as_deref() == Some("meshfed")
                        && e.regarding.as_ref().and_then(|r| r.kind.as_deref())
                            == Some("MeshFederation")
                }))
        }
    })
    .await?;

    // Deletion: the finalizer's cleanup runs with the same identity.
    let started = Instant::now();
    Api::<MeshFederation>::all(admin.clone())
        .delete("prod", &DeleteParams::default())
        .await?;
    let feds = Api::<MeshFederation>::all(admin.clone());
    poll(Duration::from_secs(60), "federation deleted", || {
        let feds = feds.clone();
        async move { Ok(feds.get_opt("prod").await?.is_none()) }
    })
    .await?;
    ensure!(
        Api::<ClusterRole>::all(admin.clone())
            .get_opt("meshfed-reader-prod")
            .await?
            .is_none(),
        "cleanup removed the reader ClusterRole"
    );
    eprintln!("cleanup as the ServiceAccount: {:?}", started.elapsed());
    drop(operator);
    Ok(())
}

/// Tries, as meshfed's member identity (`kubeconfig`), every RBAC and
/// token write it must be refused, and the ones it needs.
async fn member_identity_is_least_privilege(admin: &Client, kubeconfig: &str) -> Result<()> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let member = Client::try_from(config)?;
    let dry = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let touch = json!({"metadata": {"annotations": {"meshfed.io/e2e": "touched"}}});
    let roles = Api::<ClusterRole>::all(member.clone());
    let bindings = Api::<ClusterRoleBinding>::all(member.clone());
    for name in [
        "cluster-admin",
        "admin",
        "meshfed-member",
        "system:basic-user",
    ] {
        ensure!(
            is_forbidden(roles.patch(name, &dry, &Patch::Merge(&touch)).await),
            "member identity may patch ClusterRole {name}"
        );
        ensure!(
            is_forbidden(
                roles
                    .delete(
                        name,
                        &DeleteParams {
                            dry_run: true,
                            ..Default::default()
                        }
                    )
                    .await
            ),
            "member identity may delete ClusterRole {name}"
        );
    }
    for name in ["cluster-admin", "meshfed-member", "system:basic-user"] {
        ensure!(
            is_forbidden(bindings.patch(name, &dry, &Patch::Merge(&touch)).await),
            "member identity may patch ClusterRoleBinding {name}"
        );
    }
    // Creating is not limited by name; the escalation check stops it from
    // granting anything it does not hold.
    let escalate: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "meshfed-e2e-escalate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "meshfed-member", "namespace": ISTIO_NAMESPACE}],
    }))?;
    ensure!(
        is_forbidden(bindings.create(&PostParams::default(), &escalate).await),
        "member identity may bind cluster-admin"
    );
    let wide: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "meshfed-e2e-wide"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}],
    }))?;
    ensure!(
        is_forbidden(roles.create(&PostParams::default(), &wide).await),
        "member identity may create a role that grants writes it lacks"
    );
    // Allowed: its own reader role and binding.
    roles
        .patch("meshfed-reader-prod", &dry, &Patch::Merge(&touch))
        .await
        .context("patching meshfed's reader role")?;
    bindings
        .patch("meshfed-reader-prod", &dry, &Patch::Merge(&touch))
        .await
        .context("patching meshfed's reader binding")?;
    // Tokens: for the reader and itself only. istiod's account stands in
    // for every other one in istio-system.
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), ISTIO_NAMESPACE);
    let istiod: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "istiod"}}))?;
    if accounts.get_opt("istiod").await?.is_none() {
        accounts.create(&PostParams::default(), &istiod).await?;
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let as_member = Api::<ServiceAccount>::namespaced(member.clone(), ISTIO_NAMESPACE);
    for other in ["istiod", "default"] {
        ensure!(
            is_forbidden(
                as_member
                    .create_token_request(other, &PostParams::default(), &request)
                    .await
            ),
            "member identity may mint a token for {other}"
        );
    }
    for own in ["meshfed-reader-prod", "meshfed-member"] {
        as_member
            .create_token_request(own, &PostParams::default(), &request)
            .await
            .with_context(|| format!("a token for {own}"))?;
    }
    // The other path to a token: a service-account-token Secret, which the
    // controller manager fills with a token that never expires. The Role
    // grants Secret create in istio-system; the shipped admission policy
    // refuses it for any account the identity cannot request tokens for,
    // and for meshfed's own accounts (whose tokens must expire).
    let token_secret = |name: &str, account: &str| -> Result<Secret> {
        Ok(serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": {"kubernetes.io/service-account.name": account},
            },
            "type": "kubernetes.io/service-account-token",
        }))?)
    };
    let member_secrets = Api::<Secret>::namespaced(member.clone(), ISTIO_NAMESPACE);
    // The admission plugin loads a new policy a moment (about a second)
    // after it is created, and a fast federation gets here sooner.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let probe = token_secret("meshfed-e2e-probe-token", "istiod")?;
    poll(
        Duration::from_secs(20),
        "admission policy meshfed-token-secrets in force",
        || async { Ok(is_forbidden(member_secrets.create(&dry_run, &probe).await)) },
    )
    .await?;
    for account in ["istiod", "default", "meshfed-reader-prod", "meshfed-member"] {
        let made = member_secrets
            .create(
                &PostParams::default(),
                &token_secret(&format!("meshfed-e2e-{account}-token"), account)?,
            )
            .await;
        ensure!(
            is_forbidden(made),
            "member identity may create a token Secret for {account}"
        );
    }
    // Nor may it turn an ordinary Secret it made into one: the type cannot
    // change, and a Secret of that type cannot be created at all.
    let mut ordinary = token_secret("meshfed-e2e-ordinary", "istiod")?;
    ordinary.type_ = Some("Opaque".into());
    member_secrets
        .create(&PostParams::default(), &ordinary)
        .await
        .context("an ordinary Secret in istio-system")?;
    let retyped = member_secrets
        .patch(
            "meshfed-e2e-ordinary",
            &PatchParams::default(),
            &Patch::Merge(json!({"type": "kubernetes.io/service-account-token"})),
        )
        .await;
    ensure!(
        matches!(retyped, Err(kube::Error::Api(ref e)) if e.code == 403 || e.code == 422),
        "an Opaque Secret became a token Secret: {retyped:?}"
    );
    member_secrets
        .delete("meshfed-e2e-ordinary", &DeleteParams::default())
        .await?;
    // Impersonation: refused before anything else is looked at.
    let mut as_istiod = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(kubeconfig)?,
        &Default::default(),
    )
    .await?;
    as_istiod.auth_info.impersonate =
        Some(format!("system:serviceaccount:{ISTIO_NAMESPACE}:istiod"));
    let impersonating =
        Api::<ServiceAccount>::namespaced(Client::try_from(as_istiod)?, ISTIO_NAMESPACE);
    ensure!(
        is_forbidden(
            impersonating
                .create_token_request("istiod", &PostParams::default(), &request)
                .await
        ),
        "member identity may impersonate istiod"
    );
    // What `istioctl create-remote-secret` does as an admin still works:
    // the controller manager fills the token in.
    let admin_secrets = Api::<Secret>::namespaced(admin.clone(), ISTIO_NAMESPACE);
    admin_secrets
        .create(
            &PostParams::default(),
            &token_secret("meshfed-e2e-admin-token", "istiod")?,
        )
        .await
        .context("an admin's token Secret for istiod")?;
    poll(
        Duration::from_secs(20),
        "the admin's token Secret filled in",
        || async {
            Ok(admin_secrets
                .get("meshfed-e2e-admin-token")
                .await?
                .data
                .is_some_and(|d| d.contains_key("token")))
        },
    )
    .await?;
    admin_secrets
        .delete("meshfed-e2e-admin-token", &DeleteParams::default())
        .await?;
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[test]
fn sample_federation_uses_only_known_fields() {
    // The README quick start applies this file: parse it as the operator would
    // and make sure nothing in it is silently dropped.
    let text =
        std::fs::read_to_string(workspace().join("config/samples/meshfederation.yaml")).unwrap();
    let value: Value = serde_yaml::from_str(&text).unwrap();
    let fed: MeshFederation = serde_json::from_value(value.clone()).unwrap();
    let round_trip = serde_json::to_value(&fed).unwrap();
    assert_eq!(
        round_trip["spec"], value["spec"],
        "the sample has a field the API does not know"
    );
}

/// The onboarding path as the README gives it, on fresh clusters: `helm
/// install` with the chart's defaults into a cluster without `istio-system`
/// (the operator's, not a member), the operator as the chart's
/// ServiceAccount, then `kubectl meshfed join` for two members (the plugin
/// binary, as a user runs it) into a federation created with the first
/// member's entry: Ready, with renewable credentials and nothing exposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_onboarding_path_reaches_ready() -> Result<()> {
    let plugin = e2e::mesh::build_binary("kubectl-meshfed", false)?;
    let fleet = Fleet::start(3).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0);
    let admin = host.client();
    let kc = host.kubeconfig_path().to_path_buf();
    blocking(move || helm_install(&kc, &["--create-namespace"]))
        .await
        .map_err(anyhow::Error::msg)?;
    wait_crd_established(&admin).await?;
    ensure!(
        Api::<Namespace>::all(admin.clone())
            .get_opt(ISTIO_NAMESPACE)
            .await?
            .is_none(),
        "the chart's defaults need no istio-system in the operator's cluster"
    );
    let config = service_account_config(host, &admin).await?;
    let settings = Settings {
        resync: Duration::from_secs(2),
        member_timeout: Duration::from_secs(5),
        ..Settings::new(OPERATOR_NAMESPACE)
    };
    let ctx = Context::new(Client::try_from(config.clone())?, config, settings)?;
    let _operator = AbortOnDrop(tokio::spawn(run_operator(ctx)));

    let (east, west) = (fleet.cluster(1), fleet.cluster(2));
    Api::<MeshFederation>::all(admin.clone())
        .create(
            &PostParams::default(),
            &federation("prod", vec![member(east, "net-east")]),
        )
        .await?;
    for (cluster, network) in [(east, "net-east"), (west, "net-west")] {
        let (plugin, host_kc) = (plugin.clone(), host.kubeconfig_path().to_path_buf());
        let member_kc = cluster.kubeconfig_path().to_str().unwrap().to_string();
        let name = cluster.name().to_string();
        blocking(move || {
            let out = Command::new(&plugin)
                .args(["join", &name, "--kubeconfig", &member_kc])
                .args(["--federation", "prod", "--network", network])
                .env("KUBECONFIG", &host_kc)
                .output()
                .map_err(|e| e.to_string())?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("join {name}: {}", String::from_utf8_lossy(&out.stderr)))
        })
        .await
        .map_err(anyhow::Error::msg)?;
    }
    let ready = wait_for_federation(&admin, "prod", Duration::from_secs(90), "Ready", |f| {
        has_condition(f, "Ready", "True") && f.spec.members.len() == 2
    })
    .await?;
    let reachable = e2e::mesh::condition(&ready, "MembersReachable").unwrap();
    ensure!(
        reachable.reason == "AllReachable",
        "join's credentials are renewable: no expiry warning: {reachable:?}"
    );
    ensure!(has_condition(&ready, "CredentialsExposed", "False"));
    Ok(())
}
