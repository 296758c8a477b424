//! meshfed-operator: reconciles MeshFederation resources.
use std::time::Duration;

use clap::Parser;
use kube::{Client, Config};
use meshfed::reconcile::{Context, Settings, run};

/// Joins Kubernetes clusters into one Istio multi-primary mesh: watches
/// MeshFederation resources (group meshfed.io) and drives every member
/// cluster's CA material, reader identity and remote secrets.
///
/// Talks to the cluster it runs in through the in-cluster service account, or
/// outside a cluster through $KUBECONFIG / ~/.kube/config.
#[derive(Parser, Debug)]
#[command(name = "meshfed-operator", version)]
struct Args {
    /// Namespace holding member kubeconfig Secrets and generated root CAs
    /// (the operator's own namespace).
    #[arg(long, env = "MESHFED_NAMESPACE", default_value = "meshfed-system")]
    namespace: String,

    /// Reconcile every federation at least this often, to refresh tokens,
    /// renew intermediates and notice members that went away (e.g. 30s, 5m).
    #[arg(long, env = "MESHFED_RESYNC", default_value = "60s", value_parser = parse_duration)]
    resync: Duration,

    /// Give up on one member's step after this long; the member is then
    /// reported unreachable and the others carry on.
    #[arg(long, env = "MESHFED_MEMBER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    member_timeout: Duration,

    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "MESHFED_LOG_JSON")]
    log_json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = text
        .parse()
        .map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))?;
    if d.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(d.into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    meshfed::telemetry::init_logging(args.log_json);
    let config = Config::infer().await?;
    let client = Client::try_from(config.clone())?;
    tracing::info!(namespace = %args.namespace, "meshfed-operator starting");
    let settings = Settings {
        namespace: args.namespace,
        resync: args.resync,
        member_timeout: args.member_timeout,
    };
    run(Context::new(client, config, settings)?).await;
    Ok(())
}
