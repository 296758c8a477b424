//! kubectl-meshfed: the `kubectl meshfed` plugin.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config, ResourceExt};
use meshfed::api::{KubeconfigSecretRef, Member, MemberCredentials, MeshFederation};
use meshfed::cli::{self, Level, MEMBER_IDENTITY, Preflight};
use meshfed::render::{KubeconfigInputs, render_kubeconfig};

/// Status, preflight checks and joining for meshfed federations.
///
/// `status` and `join` talk to the cluster that runs the operator through the
/// current kubeconfig ($KUBECONFIG or ~/.kube/config). Exit codes: 0 done (or
/// Ready), 1 not done (a failed check, not Ready in time, an API error), 2
/// bad usage.
#[derive(Parser, Debug)]
#[command(name = "kubectl meshfed", bin_name = "kubectl meshfed", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Where a federation (or every federation) stands, one line per member.
    Status {
        /// The federation; all of them when omitted.
        name: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Redraw whenever the federation changes.
        #[arg(long, conflicts_with = "wait")]
        watch: bool,
        /// Wait until the federation is Ready, showing members done / total.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 10m).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
        /// Context of the operator's cluster in the current kubeconfig.
        #[arg(long)]
        context: Option<String>,
    },
    /// Preflight a cluster before it joins: what would stop meshfed or its peers.
    Check {
        /// The prospective member's kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Context in that kubeconfig (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// The federation it would join (to tell its own objects from others').
        #[arg(long)]
        federation: Option<String>,
    },
    /// Give meshfed a least-privilege identity in a cluster and store a
    /// short-lived credential for it in the operator's namespace.
    Join {
        /// Member name (its Istio cluster ID).
        name: String,
        /// The cluster's kubeconfig, with rights to create RBAC there.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Context in that kubeconfig (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// Context of the operator's cluster in the current kubeconfig.
        #[arg(long)]
        host_context: Option<String>,
        /// The operator's namespace.
        #[arg(long, default_value = "meshfed-system")]
        namespace: String,
        /// Lifetime of the stored token; run join again before it ends.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        token_lifetime: Duration,
        /// Also add (or update) the member in this federation.
        #[arg(long, requires = "network")]
        federation: Option<String>,
        /// The member's network (with --federation).
        #[arg(long)]
        network: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<kube::core::Duration>()
        .map(Into::into)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn host_client(context: &Option<String>) -> Result<Client> {
    let options = KubeConfigOptions {
        context: context.clone(),
        ..Default::default()
    };
    let config = match context {
        Some(_) => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    };
    Ok(Client::try_from(config)?)
}

async fn member_config(path: &PathBuf, context: &Option<String>) -> Result<Config> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let options = KubeConfigOptions {
        context: context.clone(),
        ..Default::default()
    };
    Ok(Config::from_custom_kubeconfig(kubeconfig, &options).await?)
}

/// Ok(true): done; Ok(false): not done (exit 1).
async fn run(args: Args) -> Result<bool> {
    match args.command {
        Command::Status {
            name,
            output,
            watch,
            wait,
            timeout,
            context,
        } => {
            let api = Api::<MeshFederation>::all(host_client(&context).await?);
            if wait {
                let name = name.context("--wait needs a federation name")?;
                return wait_ready(&api, &name, timeout).await;
            }
            if watch {
                let name = name.context("--watch needs a federation name")?;
                return watch_status(&api, &name, output).await;
            }
            let feds = match name {
                Some(n) => vec![get_federation(&api, &n).await?],
                None => api.list(&ListParams::default()).await?.items,
            };
            print!("{}", render(&feds, output)?);
            Ok(feds.iter().all(|f| cli::progress(f).2))
        }
        Command::Check {
            kubeconfig,
            context,
            federation,
        } => {
            let config = member_config(&kubeconfig, &context).await?;
            let preflight = preflight(config).await?;
            let findings = cli::findings(&preflight, federation.as_deref());
            for f in &findings {
                let level = match f.level {
                    Level::Ok => "ok  ",
                    Level::Warn => "WARN",
                    Level::Fail => "FAIL",
                };
                println!("{level}  {}", f.what);
                if f.level != Level::Ok && !f.fix.is_empty() {
                    println!("      -> {}", f.fix);
                }
            }
            Ok(!findings.iter().any(|f| f.level == Level::Fail))
        }
        Command::Join {
            name,
            kubeconfig,
            context,
            host_context,
            namespace,
            token_lifetime,
            federation,
            network,
        } => {
            let host = host_client(&host_context).await?;
            let config = member_config(&kubeconfig, &context).await?;
            join(
                host,
                config,
                &name,
                &namespace,
                token_lifetime,
                federation.zip(network),
            )
            .await?;
            Ok(true)
        }
    }
}

fn render(feds: &[MeshFederation], output: Output) -> Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(feds)? + "\n",
        Output::Yaml => serde_yaml::to_string(feds)?,
        Output::Table => feds
            .iter()
            .map(|f| format!("{}\n{}", cli::headline(f), cli::status_table(f)))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// The federation, or an error that says plainly that it does not exist.
async fn get_federation(api: &Api<MeshFederation>, name: &str) -> Result<MeshFederation> {
    match api.get_opt(name).await {
        Ok(Some(fed)) => Ok(fed),
        Ok(None) => bail!("federation {name} not found"),
        Err(e) => Err(e).with_context(|| format!("reading federation {name}")),
    }
}

async fn wait_ready(api: &Api<MeshFederation>, name: &str, timeout: Duration) -> Result<bool> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let fed = get_federation(api, name).await?;
        let (ready_members, members, ready) = cli::progress(&fed);
        let line = cli::headline(&fed);
        if line != last {
            eprintln!(
                "[{:>4}s] {ready_members}/{members} members ready: {line}",
                started.elapsed().as_secs()
            );
            last = line;
        }
        if ready {
            return Ok(true);
        }
        if started.elapsed() > timeout {
            eprintln!("not Ready within {timeout:?}");
            print!("{}", cli::status_table(&fed));
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch_status(api: &Api<MeshFederation>, name: &str, output: Output) -> Result<bool> {
    use std::io::IsTerminal;
    let mut stream = watcher::watch_object(api.clone(), name).boxed();
    let tty = std::io::stdout().is_terminal();
    while let Some(event) = stream.next().await {
        match event? {
            Some(fed) => {
                if tty {
                    print!("\x1b[2J\x1b[H");
                } else {
                    println!("---");
                }
                print!("{}", render(std::slice::from_ref(&fed), output)?);
            }
            None => println!("federation {name} does not exist (yet)"),
        }
    }
    Ok(true)
}

/// What meshfed does in a member, to ask the API server whether the
/// identity may: (verb, group, resource, namespace, subresource, name).
const NEEDED: [(&str, &str, &str, &str, &str, &str); 9] = [
    ("create", "", "namespaces", "", "", ""),
    ("patch", "", "namespaces", "", "", "istio-system"),
    (
        "create",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "",
        "",
        "",
    ),
    (
        "create",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        "",
        "",
    ),
    ("create", "", "serviceaccounts", "istio-system", "", ""),
    ("create", "", "serviceaccounts", "istio-system", "token", ""),
    ("create", "", "secrets", "istio-system", "", ""),
    ("list", "", "secrets", "istio-system", "", ""),
    ("create", "", "configmaps", "istio-system", "", ""),
];

async fn preflight(config: Config) -> Result<Preflight> {
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)?;
    let version = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .map_err(|_| "no answer within 10s".to_string())
        .and_then(|r| r.map(|v| v.git_version).map_err(|e| e.to_string()));
    let mut p = Preflight {
        server,
        version,
        istiod: None,
        cacerts: None,
        network: None,
        permissions: Vec::new(),
        token_secrets: Vec::new(),
    };
    if p.version.is_err() {
        return Ok(p);
    }
    let federation_label =
        |labels: &BTreeMap<String, String>| labels.get("meshfed.io/federation").cloned();
    p.istiod = Api::<Deployment>::namespaced(client.clone(), "istio-system")
        .get_opt("istiod")
        .await
        .unwrap_or(None)
        .map(|d| federation_label(d.labels()));
    p.cacerts = Api::<Secret>::namespaced(client.clone(), "istio-system")
        .get_metadata_opt("cacerts")
        .await
        .unwrap_or(None)
        .map(|s| federation_label(s.labels()));
    p.network = Api::<Namespace>::all(client.clone())
        .get_opt("istio-system")
        .await
        .unwrap_or(None)
        .and_then(|n| n.labels().get("topology.istio.io/network").cloned());
    let reviews = Api::<SelfSubjectAccessReview>::all(client.clone());
    for (verb, group, resource, namespace, subresource, name) in NEEDED {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    namespace: (!namespace.is_empty()).then(|| namespace.into()),
                    subresource: (!subresource.is_empty()).then(|| subresource.into()),
                    name: (!name.is_empty()).then(|| name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed = reviews
            .create(&PostParams::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed);
        let what = match (subresource, namespace, name) {
            ("", "", "") => format!("{verb} {resource}"),
            ("", "", name) => format!("{verb} {resource} {name}"),
            ("", ns, _) => format!("{verb} {resource} in {ns}"),
            (sub, ns, _) => format!("{verb} {resource}/{sub} in {ns}"),
        };
        p.permissions.push((what, allowed));
    }
    if let Ok(list) = Api::<Secret>::all(client.clone())
        .list_metadata(&ListParams::default().fields("type=kubernetes.io/service-account-token"))
        .await
    {
        p.token_secrets = list
            .items
            .iter()
            .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
            .collect();
    }
    Ok(p)
}

async fn join(
    host: Client,
    member: Config,
    name: &str,
    namespace: &str,
    token_lifetime: Duration,
    federation: Option<(String, String)>,
) -> Result<()> {
    let server = member.cluster_url.to_string();
    let ca_pem = member_ca_pem(&member)?;
    let client = Client::try_from(member)?;
    let params = PatchParams::apply("kubectl-meshfed").force();

    eprintln!("[1/4] istio-system and meshfed's member roles in {name}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}
    }))?;
    let namespaces = Api::<Namespace>::all(client.clone());
    if namespaces.get_opt("istio-system").await?.is_none() {
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    for object in cli::member_rbac() {
        let obj: DynamicObject = serde_json::from_value(object)?;
        let types = obj.types.clone().context("object without a kind")?;
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", types.api_version.as_str()));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
        let api = match obj.namespace() {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource),
            None => Api::<DynamicObject>::all_with(client.clone(), &resource),
        };
        api.patch(&obj.name_any(), &params, &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {} {}", types.kind, obj.name_any()))?;
    }

    eprintln!("[2/4] a {token_lifetime:?} token for istio-system/{MEMBER_IDENTITY}");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(token_lifetime.as_secs() as i64),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), "istio-system")
        .create_token_request(MEMBER_IDENTITY, &PostParams::default(), &request)
        .await
        .context("requesting a token for meshfed's member identity")?
        .status
        .context("TokenRequest returned no token")?;
    let kubeconfig = render_kubeconfig(&KubeconfigInputs {
        cluster: name,
        server: &server,
        ca_pem: &ca_pem,
        token: &issued.token,
    });

    let secret_name = format!("{name}-kubeconfig");
    eprintln!("[3/4] Secret {namespace}/{secret_name} in the operator's cluster");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": secret_name, "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "kubectl-meshfed", "meshfed.io/member": name},
            "annotations": {"meshfed.io/token-expires": issued.expiration_timestamp.0.to_string()},
        },
        "type": "Opaque",
        "stringData": {"kubeconfig": kubeconfig},
    }))?;
    Api::<Secret>::namespaced(host.clone(), namespace)
        .patch(&secret_name, &params, &Patch::Apply(&secret))
        .await
        .context("storing the member's kubeconfig")?;

    let entry = Member {
        name: name.into(),
        network: federation
            .as_ref()
            .map_or("<network>".into(), |(_, n)| n.clone()),
        credentials: MemberCredentials {
            secret_ref: Some(KubeconfigSecretRef {
                name: secret_name.clone(),
                key: None,
            }),
            local: None,
        },
        api_server: None,
        control_plane_values: None,
        east_west_gateway: None,
    };
    match federation {
        Some((fed_name, _)) => {
            eprintln!("[4/4] member {name} in federation {fed_name}");
            let api = Api::<MeshFederation>::all(host);
            let mut fed = get_federation(&api, &fed_name).await?;
            match fed.spec.members.iter_mut().find(|m| m.name == name) {
                Some(existing) => {
                    existing.credentials = entry.credentials;
                    existing.network = entry.network;
                }
                None => fed.spec.members.push(entry),
            }
            fed.status = None;
            api.replace(&fed_name, &PostParams::default(), &fed)
                .await
                .context("updating the federation")?;
            println!(
                "member {name} joined federation {fed_name}; its token expires at {} (run join again before then)",
                issued.expiration_timestamp.0
            );
        }
        None => {
            eprintln!("[4/4] add this entry to spec.members:");
            print!("{}", serde_yaml::to_string(&vec![entry])?);
        }
    }
    Ok(())
}

/// The CA the member's kubeconfig trusts, as PEM: peers and the operator
/// verify the member's API server with it.
fn member_ca_pem(config: &Config) -> Result<String> {
    match meshfed::members::ca_pem(config) {
        Some(pem) => Ok(pem),
        None => bail!(
            "the member's kubeconfig has no certificate-authority data; meshfed only uses verified TLS"
        ),
    }
}
