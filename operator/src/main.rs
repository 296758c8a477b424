//! meshfed-operator: reconciles MeshFederation resources.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use kube::{Client, Config};
use meshfed::controller::{Context, run};
use meshfed::leader::LeaderElector;
use meshfed::settings::Settings;
use meshfed::telemetry::{Liveness, Probes, serve};
use tracing::{error, info};

/// Joins Kubernetes clusters into one Istio multi-primary mesh: watches
/// MeshFederation resources (group meshfed.io) and drives every member
/// cluster's CA material, reader identity and remote secrets.
///
/// Talks to the cluster it runs in through the in-cluster service account, or
/// outside a cluster through $KUBECONFIG / ~/.kube/config. Every flag can also
/// be set through the environment variable named in brackets.
#[derive(Parser, Debug)]
#[command(name = "meshfed-operator", version)]
struct Args {
    /// Namespace holding member kubeconfig Secrets, generated root CAs and the
    /// leader-election Lease (the operator's own namespace).
    #[arg(long, env = "MESHFED_NAMESPACE", default_value = "meshfed-system")]
    namespace: String,

    /// Safety resync: run every member's worker at least this often (e.g.
    /// 30s, 5m). Changes in members are seen at once through watches, and
    /// token refreshes and renewals are scheduled at their deadlines.
    #[arg(long, env = "MESHFED_RESYNC", default_value = "60s", value_parser = parse_duration)]
    resync: Duration,

    /// Give up on one member's step after this long; the member is then
    /// reported unreachable. Each member has its own worker: the others never
    /// wait for it.
    #[arg(long, env = "MESHFED_MEMBER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    member_timeout: Duration,

    /// Elect a leader through a Lease so that of several replicas only one
    /// reconciles; the others stand by and take over when it stops.
    #[arg(long, env = "MESHFED_LEADER_ELECT")]
    leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "MESHFED_LEADER_LEASE",
        default_value = "meshfed-operator-leader"
    )]
    leader_lease: String,

    /// How long a leader's Lease stays valid without renewal; a standby takes
    /// over at most this long after the leader dies (at once if it exits cleanly).
    #[arg(long, env = "MESHFED_LEADER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_lease_duration: Duration,

    /// Fail /healthz (the liveness probe) when the controller is stuck: a
    /// reconcile has run this long, or a federation's periodic reconcile
    /// (due within --resync) has not come for this long. A standby replica,
    /// and a leader with no federations, stay live. At least twice --resync.
    /// Default: 5 × --resync, and at least 5m.
    #[arg(long, env = "MESHFED_STALL_TIMEOUT", value_parser = parse_duration)]
    stall_timeout: Option<Duration>,

    /// Identity in the Lease. Default: $POD_NAME, else the host name and process id.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Address for /metrics (Prometheus), /healthz and /readyz.
    #[arg(long, env = "MESHFED_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Istio chart sets for `spec.controlPlane`, one directory per Istio
    /// version (the name is what spec.controlPlane.version takes), each
    /// holding Istio's `manifests/charts` layout (base,
    /// istio-control/istio-discovery, gateway). The versions found there are
    /// listed at the end of --help.
    #[arg(long, env = "MESHFED_CHARTS_DIR", default_value = "/charts")]
    charts_dir: std::path::PathBuf,

    /// The helm binary used to render Istio's charts (`helm template`).
    #[arg(long, env = "MESHFED_HELM", default_value = "helm")]
    helm: std::path::PathBuf,

    /// Log JSON lines instead of human-readable text.
    #[arg(long, env = "MESHFED_LOG_JSON")]
    log_json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d: kube::core::Duration = text
        .parse()
        .map_err(|e| format!("{e} (examples: 30s, 5m, 1h)"))?;
    if d.is_negative() || Duration::from(d).is_zero() {
        return Err("must be positive".into());
    }
    Ok(d.into())
}

/// --stall-timeout, or its default for `resync`.
fn stall_timeout(given: Option<Duration>, resync: Duration) -> Result<Duration, String> {
    let stall = given.unwrap_or_else(|| Liveness::default_stall_timeout(resync));
    if stall < resync * 2 {
        return Err(format!(
            "--stall-timeout ({stall:?}) must be at least twice --resync ({resync:?}): \
             a federation is reconciled once per resync"
        ));
    }
    Ok(stall)
}

/// The charts directory as the command line or environment gives it,
/// before the arguments are parsed (for --help).
fn charts_dir_from(mut args: impl Iterator<Item = std::ffi::OsString>) -> std::path::PathBuf {
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if let Some(dir) = arg.strip_prefix("--charts-dir=") {
            return dir.into();
        }
        if arg == "--charts-dir"
            && let Some(dir) = args.next()
        {
            return dir.into();
        }
    }
    std::env::var_os("MESHFED_CHARTS_DIR").map_or_else(|| "/charts".into(), Into::into)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // --help ends with the Istio versions this operator can install.
    let charts_dir = charts_dir_from(std::env::args_os().skip(1));
    let versions = meshfed::charts::versions(&charts_dir);
    let listed = if versions.is_empty() {
        "none".to_string()
    } else {
        versions.join(", ")
    };
    let matches = Args::command()
        .after_help(format!(
            "Istio versions in {} (spec.controlPlane.version): {listed}",
            charts_dir.display()
        ))
        .get_matches();
    let args = Args::from_arg_matches(&matches)?;
    let stall_timeout = stall_timeout(args.stall_timeout, args.resync).unwrap_or_else(|e| {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit()
    });
    meshfed::telemetry::init_logging(args.log_json);
    let config = Config::infer().await?;
    let client = Client::try_from(config.clone())?;
    let settings = Settings {
        namespace: args.namespace.clone(),
        resync: args.resync,
        member_timeout: args.member_timeout,
        helm: args.helm,
        charts_dir: args.charts_dir,
    };
    let ctx = Context::new(client.clone(), config, settings)?;
    let health = Arc::new(Probes::new(ctx.liveness(), stall_timeout));
    let server = tokio::spawn(serve(args.metrics_addr, ctx.metrics(), health.clone()));

    let version = client.apiserver_version().await?;
    info!(namespace = %args.namespace, kubernetes = %version.git_version, "meshfed-operator starting");
    health.ready.store(true, Ordering::Relaxed);

    if !args.leader_elect {
        tokio::select! {
            () = run(ctx) => {}
            r = server => error!(result = ?r, "metrics server stopped"),
        }
        return Ok(());
    }
    let identity = args.identity.unwrap_or_else(default_identity);
    let elector = LeaderElector::new(
        client,
        &args.namespace,
        &args.leader_lease,
        identity,
        args.leader_lease_duration,
    );
    tokio::select! {
        () = elector.acquire() => {}
        () = shutdown_signal() => return Ok(()),
    }
    tokio::select! {
        () = run(ctx) => {}
        () = elector.hold() => {
            // Another replica may already be reconciling: stop at once.
            error!("leadership lost; exiting so a fresh start can stand by");
            std::process::exit(1);
        }
    }
    elector.release().await;
    Ok(())
}

fn default_identity() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "meshfed".into());
    format!("{}-{}", host.trim(), std::process::id())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_timeout_defaults_to_five_resyncs_and_is_at_least_two() {
        let s = Duration::from_secs;
        assert_eq!(stall_timeout(None, s(60)), Ok(s(300)));
        assert_eq!(stall_timeout(None, s(3600)), Ok(s(18000)));
        assert_eq!(stall_timeout(Some(s(120)), s(60)), Ok(s(120)));
        let err = stall_timeout(Some(s(90)), s(60)).unwrap_err();
        assert!(err.contains("at least twice --resync"), "{err}");
        // A duration, as the other flags take.
        let args = Args::try_parse_from(["meshfed-operator", "--stall-timeout=15m"]).unwrap();
        assert_eq!(args.stall_timeout, Some(s(900)));
    }

    #[test]
    fn help_finds_the_charts_dir_before_parsing() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            charts_dir_from(args(&["--resync", "5s", "--charts-dir", "/x"]).into_iter()),
            std::path::PathBuf::from("/x")
        );
        assert_eq!(
            charts_dir_from(args(&["--charts-dir=/y", "--help"]).into_iter()),
            std::path::PathBuf::from("/y")
        );
    }
}
