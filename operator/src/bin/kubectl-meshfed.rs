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
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config, ResourceExt};
use meshfed::api::{KubeconfigSecretRef, Member, MemberCredentials, MeshFederation};
use meshfed::member::error_text;
use meshfed::plugin::{self, Level, MEMBER_IDENTITY, Preflight};
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
        #[arg(long, conflicts_with = "wait", requires = "name")]
        watch: bool,
        /// Wait until the federation is Ready, showing members done / total.
        #[arg(long, requires = "name")]
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
        /// The federation it would join (to tell its own objects from
        /// others', and to check the rights on its reader).
        #[arg(long, default_value = "prod")]
        federation: String,
    },
    /// Give meshfed a least-privilege identity in a cluster and store a
    /// short-lived credential for it in the operator's namespace.
    Join(JoinArgs),
}

/// `join`'s arguments.
#[derive(clap::Args, Debug)]
struct JoinArgs {
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
    /// Lifetime of the stored token. The operator renews it (a new token of
    /// the same lifetime) with a third left; if the operator is stopped for
    /// longer, run join again.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    token_lifetime: Duration,
    /// The federation it joins: the member's roles may change only its
    /// reader role and mint tokens only for its reader. With --network the
    /// member is also added (or updated) there; without, the entry to add is
    /// printed.
    #[arg(long)]
    federation: String,
    /// The member's network (topology.istio.io/network).
    #[arg(long)]
    network: Option<String>,
    /// The API server address the operator (and peers) should use, when
    /// it differs from the one in --kubeconfig (a bastion, a loopback
    /// tunnel, a private endpoint).
    #[arg(long)]
    server: Option<String>,
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
            Ok(feds.iter().all(|f| plugin::progress(f).2))
        }
        Command::Check {
            kubeconfig,
            context,
            federation,
        } => {
            let config = member_config(&kubeconfig, &context).await?;
            let preflight = preflight(config, &federation).await?;
            let findings = plugin::findings(&preflight, Some(&federation));
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
        Command::Join(args) => {
            let host = host_client(&args.host_context).await?;
            let config = member_config(&args.kubeconfig, &args.context).await?;
            join(host, config, &args).await?;
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
            .map(|f| {
                let warnings: String = plugin::warnings(f)
                    .iter()
                    .map(|w| format!("{w}\n"))
                    .collect();
                format!(
                    "{}\n{}{warnings}",
                    plugin::headline(f),
                    plugin::status_table(f)
                )
            })
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
        let (ready_members, members, ready) = plugin::progress(&fed);
        let line = plugin::headline(&fed);
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
            print!("{}", plugin::status_table(&fed));
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

async fn preflight(config: Config, federation: &str) -> Result<Preflight> {
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
        unreadable: Vec::new(),
    };
    if p.version.is_err() {
        return Ok(p);
    }
    let federation_label =
        |labels: &BTreeMap<String, String>| labels.get("meshfed.io/federation").cloned();
    let mut unreadable = Vec::new();
    let mut note =
        |what: &str, e: kube::Error| unreadable.push(format!("{what}: {}", error_text(&e)));
    // istiod, or istiod-<revision>: every istiod Deployment is labelled app=istiod.
    match Api::<Deployment>::namespaced(client.clone(), "istio-system")
        .list(&ListParams::default().labels("app=istiod"))
        .await
    {
        Ok(list) => {
            p.istiod = list.items.first().map(|d| federation_label(d.labels()));
        }
        Err(e) => note("istiod Deployments in istio-system", e),
    }
    match Api::<Secret>::namespaced(client.clone(), "istio-system")
        .get_metadata_opt("cacerts")
        .await
    {
        Ok(s) => p.cacerts = s.map(|s| federation_label(s.labels())),
        Err(e) => note("Secret istio-system/cacerts", e),
    }
    match Api::<Namespace>::all(client.clone())
        .get_opt("istio-system")
        .await
    {
        Ok(n) => p.network = n.and_then(|n| n.labels().get("topology.istio.io/network").cloned()),
        Err(e) => note("Namespace istio-system", e),
    }
    match Api::<Secret>::all(client.clone())
        .list_metadata(&ListParams::default().fields("type=kubernetes.io/service-account-token"))
        .await
    {
        Ok(list) => {
            p.token_secrets = list
                .items
                .iter()
                .map(|s| format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any()))
                .collect()
        }
        Err(e) => note("Secrets cluster-wide", e),
    }
    p.unreadable = unreadable;
    let reviews = Api::<SelfSubjectAccessReview>::all(client.clone());
    for needed in plugin::needed_permissions(federation) {
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(needed.verb.clone()),
                    group: Some(needed.group.clone()),
                    resource: Some(needed.resource.clone()),
                    subresource: optional(&needed.subresource),
                    namespace: optional(&needed.namespace),
                    name: optional(&needed.name),
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
        p.permissions.push((needed.to_string(), allowed));
    }
    Ok(p)
}

async fn join(host: Client, member: Config, args: &JoinArgs) -> Result<()> {
    let (name, namespace, token_lifetime) = (
        args.name.as_str(),
        args.namespace.as_str(),
        args.token_lifetime,
    );
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| member.cluster_url.to_string());
    if plugin::unusable_by_peers(&server) {
        eprintln!(
            "warning: {server} is a loopback or cluster-internal address: the operator and peers must be able to reach it (--server, and spec.members[].apiServer for peers)"
        );
    }
    let ca_pem = member_ca_pem(&member)?;
    let client = Client::try_from(member)?;
    let params = PatchParams::apply("kubectl-meshfed").force();

    eprintln!("[1/4] istio-system and meshfed's member roles in {name}");
    meshfed::connection::apply_member_rbac(&client, &args.federation, "kubectl-meshfed")
        .await
        .context("applying meshfed's member roles")?;

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
            "labels": {"app.kubernetes.io/managed-by": meshfed::connection::JOIN_MANAGER, "meshfed.io/member": name},
        },
        "type": "Opaque",
        "stringData": {"kubeconfig": kubeconfig},
    }))?;
    Api::<Secret>::namespaced(host.clone(), namespace)
        .patch(&secret_name, &params, &Patch::Apply(&secret))
        .await
        .context("storing the member's kubeconfig")?;

    let fed_name = &args.federation;
    let entry = Member {
        name: name.into(),
        network: args.network.clone().unwrap_or_else(|| "<network>".into()),
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
    match &args.network {
        Some(_) => {
            eprintln!("[4/4] member {name} in federation {fed_name}");
            add_member(&Api::<MeshFederation>::all(host), fed_name, &entry).await?;
            println!(
                "member {name} joined federation {fed_name}; the operator renews its token (valid until {}) while it runs",
                issued.expiration_timestamp.0
            );
        }
        None => {
            eprintln!("[4/4] add this entry to spec.members of {fed_name}:");
            print!("{}", serde_yaml::to_string(&vec![entry])?);
        }
    }
    Ok(())
}

/// Adds `entry` to the federation's members (or updates the member of that
/// name), touching nothing else in the object: a merge patch of
/// `spec.members` carrying the resourceVersion it was computed from (the API
/// server refuses it with 409 if the federation changed meanwhile; then it is
/// computed again).
async fn add_member(api: &Api<MeshFederation>, federation: &str, entry: &Member) -> Result<()> {
    for _ in 0..5 {
        let fed = get_federation(api, federation).await?;
        let mut members = serde_json::to_value(&fed.spec.members)?;
        let list = members.as_array_mut().context("spec.members is a list")?;
        let new = serde_json::to_value(entry)?;
        match list.iter_mut().find(|m| m["name"] == entry.name) {
            Some(existing) => {
                existing["credentials"] = new["credentials"].clone();
                existing["network"] = new["network"].clone();
            }
            None => list.push(new),
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": fed.metadata.resource_version},
            "spec": {"members": members},
        });
        match api
            .patch(federation, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            // The federation changed since it was read: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).context("updating the federation"),
        }
    }
    bail!("federation {federation} kept changing; run join again")
}

/// The CA the member's kubeconfig trusts, as PEM: peers and the operator
/// verify the member's API server with it.
fn member_ca_pem(config: &Config) -> Result<String> {
    match meshfed::connection::ca_pem(config) {
        Some(pem) => Ok(pem),
        None => bail!(
            "the member's kubeconfig has no certificate-authority data; meshfed only uses verified TLS"
        ),
    }
}
