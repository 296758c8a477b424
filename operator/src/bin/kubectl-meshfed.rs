//! kubectl-meshfed: the `kubectl meshfed` plugin.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config, ResourceExt};
use meshfed::api::ControlPlaneMode;
use meshfed::api::{KubeconfigSecretRef, Member, MemberCredentials, MeshFederation};
use meshfed::member::{cluster_admin_binding, denial, error_text};
use meshfed::plugin::{self, FederationLookup, Level, MEMBER_IDENTITY, Permission, Preflight};
use meshfed::render::{KubeconfigInputs, render_kubeconfig};

/// Status, preflight checks, joining and day-two changes (rotate, leave,
/// upgrade) for meshfed federations.
///
/// The cluster that runs the operator is reached through the current
/// kubeconfig ($KUBECONFIG or ~/.kube/config), its context chosen with
/// --host-context; a member through --kubeconfig, its context chosen with
/// --context. Exit codes: 0 done (or Ready), 1 not done (a failed check, not
/// Ready in time, an API error), 2 bad usage (also a member name, network
/// or token lifetime the cluster would refuse: then nothing is written).
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
        // `--context`, its name before it matched join's, stays as a hidden
        // alias for scripts.
        #[arg(long, alias = "context")]
        host_context: Option<String>,
    },
    /// Preflight a cluster before it joins: what would stop meshfed or its peers.
    Check {
        /// The prospective member's kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Context in that kubeconfig (default: its current context).
        #[arg(long)]
        context: Option<String>,
        /// The federation it would join, as for join: to tell its own
        /// objects from others', to check the rights on its reader, and
        /// (read from the operator's cluster) whether its control plane is
        /// Managed, which needs more rights.
        #[arg(long)]
        federation: String,
        /// Context of the operator's cluster in the current kubeconfig,
        /// where the federation is read.
        #[arg(long)]
        host_context: Option<String>,
    },
    /// Give meshfed a least-privilege identity in a cluster and store a
    /// short-lived credential for it in the operator's namespace.
    Join(JoinArgs),
    /// Versions of the plugin, the operator and the CRD.
    ///
    /// The operator's is the image tag of its Deployment ("not found" when
    /// it runs elsewhere, e.g. as a process); the CRD's are the versions
    /// meshfederations.meshfed.io serves, with its app.kubernetes.io/version
    /// label when it has one. A warning when plugin and operator differ.
    Version {
        /// The operator's namespace, where its Deployment (labelled
        /// app.kubernetes.io/name=meshfed-operator) is looked for.
        #[arg(long, default_value = "meshfed-system")]
        namespace: String,
        /// Context of the operator's cluster in the current kubeconfig.
        #[arg(long)]
        host_context: Option<String>,
    },
    /// Print a shell completion script for kubectl-meshfed.
    ///
    /// The script completes the kubectl-meshfed executable, e.g. bash:
    /// `source <(kubectl-meshfed completion bash)`; zsh: `kubectl-meshfed
    /// completion zsh > "${fpath[1]}/_kubectl-meshfed"`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Rotate the root CA or the reader tokens, through the federation.
    ///
    /// The request is a change of the federation itself, so that it can
    /// live in Git: --root sets spec.ca.rootRotation.request to
    /// a new value (a new generated root, through every phase of
    /// docs/rotation.md); --tokens sets the annotation
    /// meshfed.io/refresh-tokens to a new value (every reader token is
    /// replaced, docs/security.md).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["root", "tokens"])))]
    Rotate {
        /// The federation.
        name: String,
        /// Rotate the generated root CA.
        #[arg(long)]
        root: bool,
        /// Replace every reader token in every member's remote secrets.
        #[arg(long)]
        tokens: bool,
        /// Print the merge patch (to commit to Git) instead of applying it.
        #[arg(long)]
        dry_run: bool,
        /// Context of the operator's cluster in the current kubeconfig.
        #[arg(long)]
        host_context: Option<String>,
    },
    /// Remove a member from a federation.
    ///
    /// Removes it from spec.members (and spec.controlPlane.upgrade.order)
    /// with a merge patch that applies only to the federation as read, and
    /// says what spec.ca.onRemoval will do with it. The last member is
    /// refused: delete the federation instead.
    Leave {
        /// The federation.
        name: String,
        /// The member that leaves.
        member: String,
        /// Print the merge patch (to commit to Git) instead of applying it.
        #[arg(long)]
        dry_run: bool,
        /// Context of the operator's cluster in the current kubeconfig.
        #[arg(long)]
        host_context: Option<String>,
    },
    /// Move the federation's Istio to another version.
    ///
    /// Shows the waves in which the version would reach the members
    /// (spec.controlPlane.upgrade: order, maxConcurrent, strategy), then sets
    /// spec.controlPlane.version. Needs spec.controlPlane.
    Upgrade {
        /// The federation.
        name: String,
        /// The Istio version to move to (one the operator carries charts for).
        #[arg(long)]
        to: String,
        /// Print the plan and the merge patch only.
        #[arg(long)]
        dry_run: bool,
        /// Context of the operator's cluster in the current kubeconfig.
        #[arg(long)]
        host_context: Option<String>,
    },
}

/// `join`'s arguments.
#[derive(clap::Args, Debug)]
struct JoinArgs {
    /// Member name (its Istio cluster ID): a DNS-1123 label.
    #[arg(value_parser = parse_member_name)]
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
    /// Lifetime of the stored token: 10m to 2^32 seconds (what TokenRequest
    /// accepts).
    /// The operator renews it (a new token of the same lifetime) with a
    /// third left; if the operator is stopped for longer, run join again.
    #[arg(long, default_value = "24h", value_parser = parse_token_lifetime)]
    token_lifetime: Duration,
    /// The federation it joins; it must exist in the operator's cluster.
    /// The member's roles may change only its reader role and mint tokens
    /// only for its reader. With --network the member is also added (or
    /// updated) there; without, the entry to add is printed.
    #[arg(long)]
    federation: String,
    /// The member's network (topology.istio.io/network).
    #[arg(long, value_parser = parse_network)]
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
    let d: kube::core::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_negative() {
        return Err(format!("{s} is negative"));
    }
    Ok(d.into())
}

fn parse_token_lifetime(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    plugin::validate_token_lifetime(d)?;
    Ok(d)
}

fn parse_member_name(s: &str) -> Result<String, String> {
    plugin::validate_member_name(s).map(|()| s.to_string())
}

fn parse_network(s: &str) -> Result<String, String> {
    plugin::validate_network(s).map(|()| s.to_string())
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
            host_context,
        } => {
            let api = Api::<MeshFederation>::all(host_client(&host_context).await?);
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
            host_context,
        } => {
            let config = member_config(&kubeconfig, &context).await?;
            let lookup = lookup_federation(&host_context, &federation).await;
            let preflight = preflight(config, &federation, lookup).await?;
            let findings = plugin::findings(&preflight, &federation);
            for f in &findings {
                println!("{}  {}", f.level.label(), f.what);
                if !f.fix.is_empty() {
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
        Command::Version {
            namespace,
            host_context,
        } => {
            let versions = versions(&host_context, &namespace).await;
            let (text, skew) = plugin::version_text(&versions);
            print!("{text}");
            if let Some(w) = skew {
                eprintln!("{w}");
            }
            Ok(true)
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            use std::io::Write as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Args::command(), "kubectl-meshfed", &mut script);
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing the script")
                }
                _ => Ok(true),
            }
        }
        Command::Rotate {
            name,
            root,
            tokens: _,
            dry_run,
            host_context,
        } => {
            let what = if root {
                plugin::Rotation::Root
            } else {
                plugin::Rotation::Tokens
            };
            let api = Api::<MeshFederation>::all(host_client(&host_context).await?);
            let fed = get_federation(&api, &name).await?;
            let value = plugin::rotation_value(
                jiff::Timestamp::now(),
                plugin::rotation_current(&fed, what),
            );
            let patch = plugin::rotate_patch(&fed, what, &value).map_err(anyhow::Error::msg)?;
            if dry_run {
                print_patch(&name, &patch)?;
                return Ok(true);
            }
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("updating federation {name}"))?;
            match what {
                plugin::Rotation::Root => println!(
                    "root rotation requested: spec.ca.rootRotation.request of {name} is {value}"
                ),
                plugin::Rotation::Tokens => println!(
                    "token refresh requested: meshfed.io/refresh-tokens of {name} is {value}"
                ),
            }
            println!("follow it with: kubectl meshfed status {name} --wait");
            Ok(true)
        }
        Command::Leave {
            name,
            member,
            dry_run,
            host_context,
        } => {
            let api = Api::<MeshFederation>::all(host_client(&host_context).await?);
            if dry_run {
                let fed = get_federation(&api, &name).await?;
                let mut patch = plugin::leave_patch(&fed, &member).map_err(anyhow::Error::msg)?;
                eprintln!("{}", plugin::removal_text(&fed, &member));
                if let Some(p) = patch.as_object_mut() {
                    p.remove("metadata");
                }
                print_patch(&name, &patch)?;
                return Ok(true);
            }
            let fed = update_federation(&api, &name, |fed| {
                plugin::leave_patch(fed, &member).map_err(anyhow::Error::msg)
            })
            .await?;
            println!("member {member} left federation {name}");
            println!("{}", plugin::removal_text(&fed, &member));
            println!("follow it with: kubectl meshfed status {name} --wait");
            Ok(true)
        }
        Command::Upgrade {
            name,
            to,
            dry_run,
            host_context,
        } => {
            let api = Api::<MeshFederation>::all(host_client(&host_context).await?);
            let fed = get_federation(&api, &name).await?;
            let waves = plugin::upgrade_waves(&fed, &to).map_err(anyhow::Error::msg)?;
            print!("{}", plugin::upgrade_plan_text(&fed, &to, &waves));
            let patch = plugin::upgrade_patch(&to);
            if dry_run {
                print_patch(&name, &patch)?;
                return Ok(true);
            }
            // The plan shown is the plan of the federation as read: applied
            // only if it did not change meanwhile.
            let mut guarded = patch.clone();
            guarded["metadata"] =
                serde_json::json!({"resourceVersion": fed.metadata.resource_version});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&guarded))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => bail!(
                    "federation {name} changed while the plan was made: run upgrade again to see the new plan"
                ),
                Err(e) => return Err(e).with_context(|| format!("updating federation {name}")),
            }
            println!("spec.controlPlane.version of {name} is {to}");
            println!("follow it with: kubectl meshfed status {name} --wait");
            Ok(true)
        }
    }
}

/// A merge patch as `--dry-run` prints it: the JSON on stdout (to commit,
/// or to pass to kubectl patch), how to apply it on stderr.
fn print_patch(name: &str, patch: &serde_json::Value) -> Result<()> {
    eprintln!(
        "merge patch for meshfederation {name} (kubectl patch meshfederation {name} --type merge -p \"$(cat patch.json)\"):"
    );
    println!("{}", serde_json::to_string_pretty(patch)?);
    Ok(())
}

/// What `version` reports of the operator's cluster; never an error.
async fn versions(context: &Option<String>, namespace: &str) -> plugin::Versions {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let mut v = plugin::Versions {
        plugin: env!("CARGO_PKG_VERSION").to_string(),
        operator: Err("the operator's cluster was not reached".into()),
        crd: Err("the operator's cluster was not reached".into()),
    };
    let client = match host_client(context).await {
        Ok(c) => c,
        Err(e) => {
            v.operator = Err(format!("{e:#}"));
            v.crd = Err(format!("{e:#}"));
            return v;
        }
    };
    v.operator = match Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(plugin::OPERATOR_SELECTOR))
        .await
    {
        Ok(list) => match list.items.first() {
            None => Err(format!(
                "no Deployment labelled {} in namespace {namespace}; --namespace names the operator's namespace",
                plugin::OPERATOR_SELECTOR
            )),
            Some(d) => {
                let containers = d
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .map(|s| s.containers.clone())
                    .unwrap_or_default();
                let image = containers
                    .iter()
                    .find(|c| c.name == "operator")
                    .or(containers.first())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default();
                plugin::image_tag(&image).map(String::from).ok_or_else(|| {
                    format!(
                        "image {image:?} of Deployment {namespace}/{} has no tag",
                        d.name_any()
                    )
                })
            }
        },
        Err(e) => Err(api_text(&e)),
    };
    v.crd = match Api::<CustomResourceDefinition>::all(client)
        .get_opt(plugin::CRD_NAME)
        .await
    {
        Ok(Some(crd)) => {
            let served = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.served)
                .map(|v| v.name.clone())
                .collect();
            let label = crd.labels().get("app.kubernetes.io/version").cloned();
            Ok((served, label))
        }
        Ok(None) => Err("the CRD is not installed (docs/install.md)".into()),
        Err(e) => Err(api_text(&e)),
    };
    v
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

/// What the operator's cluster says of `federation`, for `check`: never an
/// error (a member's admin may not reach the operator's cluster).
async fn lookup_federation(context: &Option<String>, name: &str) -> FederationLookup {
    let limit = Duration::from_secs(10);
    let read = async {
        let api = Api::<MeshFederation>::all(host_client(context).await?);
        Ok::<_, anyhow::Error>(api.get_opt(name).await?)
    };
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(Some(fed))) => FederationLookup::Found(fed.spec.control_plane.map(|c| c.mode)),
        Ok(Ok(None)) => FederationLookup::Missing,
        Ok(Err(e)) => FederationLookup::Unknown(match e.downcast_ref::<kube::Error>() {
            Some(e) => api_text(e),
            None => format!("{e:#}"),
        }),
        Err(_) => FederationLookup::Unknown(format!("no answer within {limit:?}")),
    }
}

/// An API error as `check` and `join` print it: a refusal says what was
/// refused and to whom; the finding or error it is part of says what to do
/// (the operator's fixes in [`error_text`] speak of a member's roles).
fn api_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => match denial(&s.message) {
            Some(d) if !d.user.is_empty() => {
                format!("access denied (403): {} may not {}", d.user, d.what)
            }
            Some(d) => format!("access denied (403): may not {}", d.what),
            None => format!("API error 403: {}", s.message),
        },
        _ => error_text(e),
    }
}

/// Whether the client's identity may do `needed` (a SelfSubjectAccessReview;
/// a review that fails counts as no).
async fn may(reviews: &Api<SelfSubjectAccessReview>, needed: &Permission) -> bool {
    review(reviews, needed).await.unwrap_or(false)
}

/// What a SelfSubjectAccessReview says of `needed`; `None` when it failed.
async fn review(reviews: &Api<SelfSubjectAccessReview>, needed: &Permission) -> Option<bool> {
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
    reviews
        .create(&PostParams::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .map(|s| s.allowed)
}

async fn preflight(
    config: Config,
    federation: &str,
    lookup: FederationLookup,
) -> Result<Preflight> {
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)?;
    let version = tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
        .await
        .map_err(|_| "no answer within 10s".to_string())
        .and_then(|r| r.map(|v| v.git_version).map_err(|e| api_text(&e)));
    let mut p = Preflight {
        server,
        version,
        istiod: None,
        cacerts: None,
        network: None,
        identity: None,
        managed_permissions: Vec::new(),
        federation: lookup,
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
        |what: &str, e: kube::Error| unreadable.push(format!("{what}: {}", api_text(&e)));
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
    p.identity = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .ok()
        .and_then(|r| r.status?.user_info?.username);
    let reviews = Api::<SelfSubjectAccessReview>::all(client.clone());
    for needed in plugin::needed_permissions(federation) {
        let allowed = may(&reviews, &needed).await;
        p.permissions.push((needed, allowed));
    }
    // Managed mode's rights, unless the federation is known not to need them.
    if p.federation.managed() != Some(false) {
        for needed in plugin::managed_permissions() {
            let allowed = may(&reviews, &needed).await;
            p.managed_permissions.push((needed, allowed));
        }
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
    plugin::validate_server(&server).map_err(anyhow::Error::msg)?;
    if plugin::unusable_by_peers(&server) {
        eprintln!(
            "warning: {server} is a loopback or cluster-internal address: the operator and peers must be able to reach it (--server, and spec.members[].apiServer for peers)"
        );
    }
    let ca_pem = member_ca_pem(&member)?;
    // The operator's cluster first: nothing is written in the member until
    // the federation and the namespace are there and the Secret may be stored.
    let fed = host_ready_for(&host, args).await?;
    let managed = fed
        .spec
        .control_plane
        .as_ref()
        .is_some_and(|c| c.mode == ControlPlaneMode::Managed);
    if managed {
        eprintln!(
            "warning: federation {} has a Managed control plane: the roles join grants do not cover installing Istio's charts (cluster-admin in effect, docs/security.md); in member {name} also run: {}",
            args.federation,
            cluster_admin_binding(&format!(
                "system:serviceaccount:istio-system:{MEMBER_IDENTITY}"
            ))
        );
    }
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

/// Checks what `join` needs in the operator's cluster before it writes
/// anything anywhere: the federation and the operator's namespace exist, and
/// the current identity may store the Secret there (and, with --network,
/// change the federation). Returns the federation.
async fn host_ready_for(host: &Client, args: &JoinArgs) -> Result<MeshFederation> {
    let (fed_name, namespace, name) = (&args.federation, &args.namespace, &args.name);
    let cluster = match &args.host_context {
        Some(c) => format!("the operator's cluster (context {c})"),
        None => "the operator's cluster (the current context)".to_string(),
    };
    let nothing = format!("nothing was written to member {name} or to namespace {namespace}");
    let fed = match Api::<MeshFederation>::all(host.clone())
        .get_opt(fed_name)
        .await
    {
        Ok(Some(fed)) => fed,
        Ok(None) => bail!(
            "federation {fed_name} not found in {cluster}: create it first (config/samples/meshfederation.yaml), or check --federation and --host-context (kubectl get meshfederations); {nothing}"
        ),
        Err(e) => bail!(
            "reading federation {fed_name} in {cluster}: {} (is meshfed installed there, and may you read MeshFederations?); {nothing}",
            api_text(&e)
        ),
    };
    // Someone who may only write in the namespace may not read it: then the
    // access reviews below speak for it.
    if let Ok(None) = Api::<Namespace>::all(host.clone()).get_opt(namespace).await {
        bail!(
            "namespace {namespace} not found in {cluster}: --namespace names the operator's namespace, where join stores the member's kubeconfig (default meshfed-system); {nothing}"
        );
    }
    let on = |verb: &str, group: &str, resource: &str, ns: &str, name: &str| Permission {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: String::new(),
        namespace: ns.into(),
        name: name.into(),
    };
    let secret = format!("{name}-kubeconfig");
    let mut needed = vec![
        on("create", "", "secrets", namespace, ""),
        on("patch", "", "secrets", namespace, &secret),
    ];
    if args.network.is_some() {
        needed.push(on("patch", "meshfed.io", "meshfederations", "", fed_name));
    }
    let reviews = Api::<SelfSubjectAccessReview>::all(host.clone());
    let mut denied = Vec::new();
    for p in &needed {
        // A review that fails proves nothing: the write will tell.
        if review(&reviews, p).await == Some(false) {
            denied.push(p);
        }
    }
    if !denied.is_empty() {
        bail!(
            "you may not {} in {cluster}: join stores the member's kubeconfig there{}; ask for these rights or use another context (--host-context); {nothing}",
            plugin::summarize(&denied),
            if args.network.is_some() {
                " and adds the member to the federation"
            } else {
                ""
            }
        );
    }
    Ok(fed)
}

/// Adds `entry` to the federation's members (or updates the member of that
/// name), touching nothing else in the object.
async fn add_member(api: &Api<MeshFederation>, federation: &str, entry: &Member) -> Result<()> {
    update_federation(api, federation, |fed| {
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
        Ok(serde_json::json!({
            "metadata": {"resourceVersion": fed.metadata.resource_version},
            "spec": {"members": members},
        }))
    })
    .await
    .map(|_| ())
}

/// Applies the merge patch `change` computes from the federation as read:
/// the patch carries the resourceVersion it was computed from (the API
/// server refuses it with 409 if the federation changed meanwhile; then it
/// is read and computed again). Returns the federation it was computed from.
async fn update_federation(
    api: &Api<MeshFederation>,
    federation: &str,
    change: impl Fn(&MeshFederation) -> Result<serde_json::Value>,
) -> Result<MeshFederation> {
    for _ in 0..5 {
        let fed = get_federation(api, federation).await?;
        let patch = change(&fed)?;
        match api
            .patch(federation, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(fed),
            // The federation changed since it was read: read it again.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                return Err(anyhow::Error::msg(api_text(&e)))
                    .with_context(|| format!("updating federation {federation}"));
            }
        }
    }
    bail!("federation {federation} kept changing; run the command again")
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
