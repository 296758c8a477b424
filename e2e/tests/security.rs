//! The attack meshfed's security model must survive (docs/security.md), in
//! the recommended topology: the operator in a cluster that is not a member,
//! every member reached through the least-privilege identity `join` gives
//! it. An attacker who owns one member takes every remote-secret token
//! there, reads every Secret each token can read in every cluster, takes
//! every credential found there in turn, and tries each for writes. None of
//! what meshfed created or keeps may write anything anywhere, and the root
//! key is never read. A user's own legacy token Secret, seeded in one member
//! with cluster-admin behind it, must be found by the same search (so the
//! test can fail) and reported by meshfed.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use e2e::Fleet;
use e2e::mesh::*;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// A bearer token, and where the attacker found it. It is tried against
/// every cluster.
#[derive(Clone, Debug)]
struct Stolen {
    token: String,
    found_in: String,
}

impl Stolen {
    async fn client(&self, server: &str, ca_pem: &str) -> Result<Client> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
            B64.encode(ca_pem),
            self.token
        );
        let mut config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(&kubeconfig)?,
            &Default::default(),
        )
        .await?;
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(10));
        Ok(Client::try_from(config)?)
    }
}

/// Every bearer token in `secret` (read from `server`): a token Secret's
/// `token`, a kubeconfig's users' tokens, any bare JWT.
fn tokens_in(secret: &Secret, server: &str) -> Vec<Stolen> {
    let name = format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or(""),
        secret.metadata.name.as_deref().unwrap_or("")
    );
    let mut out = Vec::new();
    for (key, value) in secret.data.iter().flatten() {
        let Ok(text) = std::str::from_utf8(&value.0) else {
            continue;
        };
        let found_in = format!("{server} {name}[{key}]");
        if text.starts_with("eyJ") {
            out.push(Stolen {
                token: text.trim().into(),
                found_in: found_in.clone(),
            });
        }
        let Ok(kubeconfig) = serde_yaml::from_str::<serde_json::Value>(text) else {
            continue;
        };
        for user in kubeconfig["users"].as_array().into_iter().flatten() {
            if let Some(token) = user["user"]["token"].as_str() {
                out.push(Stolen {
                    token: token.into(),
                    found_in: found_in.clone(),
                });
            }
        }
    }
    out
}

/// The writes `client` manages on one cluster: a pod (dry run: authorised
/// like a real one), a change to the `admin` ClusterRole (dry run), a token
/// for `default/default`.
async fn writes(client: &Client) -> Vec<&'static str> {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "attacker"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let mut done = Vec::new();
    if (Api::<Pod>::namespaced(client.clone(), "default")
        .create(&dry, &pod)
        .await)
        .is_ok()
    {
        done.push("create a pod");
    }
    let patch = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let touch = json!({"metadata": {"labels": {"attacker": "was-here"}}});
    if (Api::<ClusterRole>::all(client.clone())
        .patch("admin", &patch, &Patch::Merge(&touch))
        .await)
        .is_ok()
    {
        done.push("patch a ClusterRole");
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    if (Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create_token_request("default", &PostParams::default(), &request)
        .await)
        .is_ok()
    {
        done.push("create a token");
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_meshfed_created_or_keeps_leads_to_a_write() -> Result<()> {
    let fleet = Fleet::start(4).await?;
    let _logs = fleet.log_guard();
    let host = fleet.cluster(0).client();
    prepare_host(&fleet).await?;
    let members: Vec<&e2e::Cluster> = (1..4).map(|i| fleet.cluster(i)).collect();
    for m in &members {
        let kubeconfig = join_identity(m, "prod").await?;
        store_kubeconfig(&host, &credentials_secret_name(m), &kubeconfig).await?;
    }
    // A user's own long-lived token Secret in member 1, for an account that
    // is cluster-admin there.
    let seeded = members[0].client();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "ci"}}))?;
    Api::<ServiceAccount>::namespaced(seeded.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "ci-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "default"}],
    }))?;
    Api::<ClusterRoleBinding>::all(seeded.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let legacy: Secret = serde_json::from_value(json!({
        "metadata": {"name": "ci-token", "annotations": {"kubernetes.io/service-account.name": "ci"}},
        "type": "kubernetes.io/service-account-token",
    }))?;
    let secrets = Api::<Secret>::namespaced(seeded.clone(), "default");
    secrets.create(&PostParams::default(), &legacy).await?;
    poll(WAIT, "the token controller fills ci-token", || async {
        Ok(secrets
            .get("ci-token")
            .await?
            .data
            .is_some_and(|d| d.contains_key("token")))
    })
    .await?;

    let _operator = start_operator(
        fleet.cluster(0),
        Duration::from_secs(2),
        Duration::from_secs(3),
    )?;
    let nets = ["net-a", "net-b", "net-c"];
    let fed = federation(
        "prod",
        members
            .iter()
            .zip(nets)
            .map(|(m, n)| member(m, n))
            .collect(),
    );
    apply_federation(&host, &fed).await?;
    wait_for_federation(&host, "prod", WAIT, "Ready", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    // meshfed reports the seeded Secret, and nothing about its own topology.
    let reported = wait_for_federation(&host, "prod", WAIT, "the legacy token reported", |f| {
        condition(f, "CredentialsExposed").is_some_and(|c| {
            c.status == "True"
                && c.reason == "ReadableTokenSecrets"
                && c.message.contains("default/ci-token")
        })
    })
    .await?;
    let status = reported.status.unwrap();
    let by_name: BTreeMap<&str, &meshfed::api::MemberStatus> = status
        .members
        .iter()
        .map(|m| (m.name.as_str(), m))
        .collect();
    assert_eq!(
        by_name[members[0].name()].readable_token_secrets,
        ["default/ci-token"]
    );
    assert!(by_name.values().all(|m| !m.operator_cluster));

    // --- the attack, from every member in turn: its remote secrets first.
    let clusters: Vec<(String, String)> = fleet
        .clusters()
        .iter()
        .map(|c| (c.server_url().to_string(), c.ca_pem().to_string()))
        .collect();
    let mut queue: VecDeque<Stolen> = VecDeque::new();
    for m in &members {
        let istio = Api::<Secret>::namespaced(m.client(), "istio-system");
        for s in istio
            .list(&ListParams::default().labels("istio/multiCluster=true"))
            .await?
        {
            queue.extend(tokens_in(&s, m.server_url()));
        }
    }
    ensure!(
        queue.len() == 6,
        "one reader token per ordered pair: {}",
        queue.len()
    );
    let root_key = Api::<Secret>::namespaced(host.clone(), OPERATOR_NAMESPACE)
        .get("prod-root-ca")
        .await?
        .data
        .context("root Secret without data")?;
    let root_key = root_key
        .get("tls.key")
        .context("root without a key")?
        .0
        .clone();

    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut read: BTreeSet<String> = BTreeSet::new();
    let mut wrote: Vec<(String, String, &'static str)> = Vec::new();
    let mut seeded_found = false;
    while let Some(stolen) = queue.pop_front() {
        if !tried.insert(stolen.token.clone()) {
            continue;
        }
        seeded_found |= stolen.found_in.contains("default/ci-token");
        // Everything it reads, in every cluster it is good for.
        for (server, ca) in &clusters {
            let client = stolen.client(server, ca).await?;
            if let Ok(list) = Api::<Secret>::all(client.clone())
                .list(&ListParams::default())
                .await
            {
                for s in list {
                    let name = format!(
                        "{server} {}/{}",
                        s.metadata.namespace.as_deref().unwrap_or(""),
                        s.metadata.name.as_deref().unwrap_or("")
                    );
                    ensure!(
                        s.data.iter().flatten().all(|(_, v)| v.0 != root_key),
                        "the root key was read with a token from {}: {name}",
                        stolen.found_in
                    );
                    read.insert(name);
                    queue.extend(tokens_in(&s, server));
                }
            }
            for what in writes(&client).await {
                wrote.push((stolen.found_in.clone(), server.clone(), what));
            }
        }
    }
    eprintln!(
        "attack: {} credentials tried, {} Secrets read, writes: {wrote:#?}",
        tried.len(),
        read.len()
    );
    ensure!(seeded_found, "the search must find the seeded legacy token");
    ensure!(
        wrote
            .iter()
            .any(|(from, _, _)| from.contains("default/ci-token")),
        "the seeded cluster-admin token must write (else the test cannot fail)"
    );
    let meshfeds: Vec<_> = wrote
        .iter()
        .filter(|(from, _, _)| !from.contains("default/ci-token"))
        .collect();
    ensure!(
        meshfeds.is_empty(),
        "writes with credentials meshfed created or keeps: {meshfeds:#?}"
    );
    ensure!(
        !read.iter().any(|n| n.contains("meshfed-system/")),
        "the operator's namespace was read: it is not in a member"
    );

    // --- a member leaves: what it holds of its peers stops working.
    let (stay, leaving) = (&members[..2], members[2]);
    let copied = copy_reader_tokens(leaving, stay).await?;
    for (peer, stolen) in &copied {
        ensure!(
            reads(&stolen.token, peer).await?,
            "{}'s copy of {}'s reader token reads before it leaves (else the test cannot fail)",
            leaving.name(),
            peer.name()
        );
    }
    // The intermediate it keeps (onRemoval: Retain, the default).
    let kept = Api::<Secret>::namespaced(leaving.client(), "istio-system")
        .get("cacerts")
        .await?;
    let kept_serial = e2e::cacerts::intermediate_serial(&kept)?;
    let mut smaller = fed.clone();
    smaller.spec.members.retain(|m| m.name != leaving.name());
    apply_federation(&host, &smaller).await?;
    let left = std::time::Instant::now();
    // meshfed's part: the Secret each copied token is bound to is deleted.
    poll(
        Duration::from_secs(5),
        "every binding of a token the departed member held deleted",
        || async {
            for (peer, stolen) in &copied {
                let bindings = Api::<Secret>::namespaced(peer.client(), "istio-system");
                if bindings.get_opt(&stolen.binding).await?.is_some() {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    let revoked = left.elapsed();
    // The API server's part: it keeps a token it accepted in its
    // authentication cache for up to 10 s (kube-apiserver's token success
    // cache), and the check above used each one just before.
    poll(
        Duration::from_secs(20),
        "every reader token the departed member held rejected",
        || async {
            for (peer, stolen) in &copied {
                if !rejected(&stolen.token, peer).await? {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await?;
    eprintln!(
        "FIGURE departed member's reader tokens: bindings deleted {revoked:?}, rejected (401) by every remaining member {:?} after it left",
        left.elapsed()
    );
    wait_for_federation(
        &host,
        "prod",
        WAIT,
        "Ready without the member that left",
        |f| {
            has_condition(f, "Ready", "True")
                && f.status.as_ref().is_some_and(|s| s.members.len() == 2)
        },
    )
    .await?;
    // The status says which intermediate every member still trusts.
    let now = Api::<meshfed::api::MeshFederation>::all(host.clone())
        .get("prod")
        .await?;
    let departed = now
        .status
        .and_then(|s| s.ca)
        .map(|ca| ca.departed_intermediates)
        .unwrap_or_default();
    ensure!(
        departed.len() == 1
            && departed[0].member == leaving.name()
            && departed[0].serial == kept_serial,
        "status.ca.departedIntermediates names the kept intermediate {kept_serial}: {departed:?}"
    );
    // The ones that stay read each other with the tokens they hold now.
    for (i, m) in stay.iter().enumerate() {
        let other = stay[1 - i];
        let held = Api::<Secret>::namespaced(m.client(), "istio-system")
            .get(&format!("istio-remote-secret-{}", other.name()))
            .await?;
        let token = tokens_in(&held, m.server_url())
            .pop()
            .context("a remote secret without a token")?;
        ensure!(
            reads(&token, other).await?,
            "{} cannot read {} with the token it holds now",
            m.name(),
            other.name()
        );
    }
    Ok(())
}

/// A reader token copied out of a remote secret, and the Secret in the
/// peer it is bound to.
struct Copied {
    token: Stolen,
    binding: String,
}

/// The reader tokens of `peers` that `member`'s remote secrets hold, as an
/// attacker who owns `member` would copy them.
async fn copy_reader_tokens<'a>(
    member: &e2e::Cluster,
    peers: &[&'a e2e::Cluster],
) -> Result<Vec<(&'a e2e::Cluster, Copied)>> {
    let istio = Api::<Secret>::namespaced(member.client(), "istio-system");
    let mut copied = Vec::new();
    for peer in peers {
        let secret = istio
            .get(&format!("istio-remote-secret-{}", peer.name()))
            .await?;
        let token = tokens_in(&secret, member.server_url())
            .pop()
            .with_context(|| format!("no token for {} in {}", peer.name(), member.name()))?;
        let binding = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(meshfed::render::keys::TOKEN_BINDING))
            .context("a remote secret without its token's binding")?
            .clone();
        copied.push((*peer, Copied { token, binding }));
    }
    Ok(copied)
}

/// Whether `stolen` lists Secrets in `cluster`.
async fn reads(stolen: &Stolen, cluster: &e2e::Cluster) -> Result<bool> {
    let client = stolen
        .client(cluster.server_url(), cluster.ca_pem())
        .await?;
    Ok(Api::<Secret>::all(client)
        .list(&ListParams::default().limit(1))
        .await
        .is_ok())
}

/// Whether `cluster` rejects `stolen` as a credential (401: revoked).
async fn rejected(stolen: &Stolen, cluster: &e2e::Cluster) -> Result<bool> {
    let client = stolen
        .client(cluster.server_url(), cluster.ca_pem())
        .await?;
    let answer = Api::<Secret>::all(client)
        .list(&ListParams::default().limit(1))
        .await;
    Ok(matches!(answer, Err(kube::Error::Api(e)) if e.code == 401))
}

/// The unsafe topology is refused unless the spec allows it: a member whose
/// kubeconfig reaches the operator's own cluster gets nothing written and
/// no peer wired to it, and the conditions name it; with
/// `allowPeersToReadOperatorSecrets` it is used, and `CredentialsExposed`
/// names what peers can read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_cluster_is_a_member_only_when_the_spec_allows_it() -> Result<()> {
    let bed = operator_bed(2, Duration::from_secs(2), Duration::from_secs(3)).await?;
    let (host, fleet) = (&bed.host, &bed.fleet);
    let (own, peer) = (fleet.cluster(0), fleet.cluster(1));
    store_credentials(host, own).await?;
    let mut fed = federation("prod", vec![member(own, "net-a"), member(peer, "net-b")]);
    apply_federation(host, &fed).await?;
    let refused = wait_for_federation(host, "prod", WAIT, "the operator's cluster refused", |f| {
        condition(f, "ClustersClaimed")
            .is_some_and(|c| c.status == "False" && c.reason == "OperatorClusterIsMember")
            && f.status.as_ref().is_some_and(|s| {
                s.members
                    .iter()
                    .any(|m| m.name == peer.name() && m.intermediate.is_some())
            })
    })
    .await?;
    let ready = condition(&refused, "Ready").context("Ready")?;
    ensure!(
        ready.status == "False" && ready.reason == "OperatorClusterIsMember",
        "{ready:?}"
    );
    let status = refused.status.as_ref().context("status")?;
    let mine = status
        .members
        .iter()
        .find(|m| m.name == own.name())
        .context("the refused member's status")?;
    let error = mine.last_error.as_deref().unwrap_or_default();
    ensure!(
        mine.operator_cluster && error.contains("spec.allowPeersToReadOperatorSecrets: true"),
        "{mine:?}"
    );
    ensure!(
        condition(&refused, "CredentialsExposed").is_some_and(|c| c.status == "False"),
        "nothing is exposed while it is refused"
    );
    // Nothing written to it, and the peer holds no way into it.
    let istio = Api::<Secret>::namespaced(own.client(), "istio-system");
    ensure!(istio.get_opt("cacerts").await?.is_none(), "no cacerts");
    let claims =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(own.client(), "istio-system");
    ensure!(
        claims.get_opt("meshfed-cluster-claim").await?.is_none(),
        "no claim"
    );
    ensure!(
        Api::<ServiceAccount>::namespaced(own.client(), "istio-system")
            .get_opt("meshfed-reader-prod")
            .await?
            .is_none(),
        "no reader"
    );
    let remote = Api::<Secret>::namespaced(peer.client(), "istio-system")
        .list(&ListParams::default().labels("istio/multiCluster=true"))
        .await?;
    ensure!(remote.items.is_empty(), "the peer is wired to nothing");

    // Allowed in so many words: used, and the exposure said.
    fed.spec.allow_peers_to_read_operator_secrets = Some(true);
    apply_federation(host, &fed).await?;
    let allowed = wait_for_federation(host, "prod", WAIT, "Ready once allowed", |f| {
        has_condition(f, "Ready", "True")
    })
    .await?;
    let exposed = condition(&allowed, "CredentialsExposed").context("CredentialsExposed")?;
    ensure!(
        exposed.status == "True"
            && exposed.reason == "OperatorClusterIsMember"
            && exposed.message.contains("prod-root-ca"),
        "{exposed:?}"
    );
    ensure!(istio.get_opt("cacerts").await?.is_some());
    Ok(())
}
