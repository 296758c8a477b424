//! One cluster of a fleet: kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok (standing in for the kubelets), sharing the
//! fleet's etcd under the prefix `/<cluster name>`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::Signal;

use super::pki::{CertKey, ClusterPki};
use super::process::{Proc, Spec, free_port, log_says_port_taken, poll_interval, rss_bytes};
use super::tools::Tools;

/// Range every cluster's Services are allocated from.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Annotation kwok selects the nodes it manages by.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// One Kubernetes cluster of a [`Fleet`](super::Fleet).
pub struct Cluster {
    index: usize,
    name: String,
    port: u16,
    server_url: String,
    ca_pem: String,
    kubeconfig_yaml: String,
    kubeconfig_path: PathBuf,
    config: kube::Config,
    node_names: Vec<String>,
    apiserver_spec: Spec,
    apiserver: Mutex<Option<Proc>>,
    components: Mutex<Vec<Proc>>,
}

/// What a cluster needs from its fleet to start.
pub(crate) struct ClusterEnv {
    pub tools: Tools,
    pub dir: PathBuf,
    pub log_dir: PathBuf,
    pub etcd_url: String,
    pub nodes: usize,
    /// Only kube-apiserver: no controller-manager, scheduler, kwok or nodes.
    pub apiserver_only: bool,
    /// Extra kube-apiserver flags.
    pub apiserver_args: Vec<String>,
    pub timeout: Duration,
}

/// Builds an admin-style kubeconfig with every credential inline.
pub fn kubeconfig_yaml(name: &str, server: &str, ca_pem: &str, client: &CertKey) -> String {
    let ca = B64.encode(ca_pem);
    let crt = B64.encode(&client.cert_pem);
    let key = B64.encode(&client.key_pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {name}
  user:
    client-certificate-data: {crt}
    client-key-data: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
current-context: {name}
preferences: {{}}
"
    )
}

async fn kube_config_from_yaml(yaml: &str) -> Result<kube::Config> {
    let kc = Kubeconfig::from_yaml(yaml).context("parse generated kubeconfig")?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("load generated kubeconfig")?;
    cfg.connect_timeout = Some(Duration::from_secs(5));
    Ok(cfg)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("write {}", path.display()))
}

impl Cluster {
    pub(crate) async fn start(index: usize, env: Arc<ClusterEnv>) -> Result<Cluster> {
        let name = format!("cluster-{index}");
        let deadline = Instant::now() + env.timeout;
        let dir = env.dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        let pki = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || ClusterPki::generate(&name)).await??
        };
        let f = |n: &str| dir.join(n);
        write(&f("server-ca.crt"), &pki.server_ca.cert_pem)?;
        write(&f("apiserver.crt"), &pki.serving.cert_pem)?;
        write(&f("apiserver.key"), &pki.serving.key_pem)?;
        write(&f("client-ca.crt"), &pki.client_ca.cert_pem)?;
        write(&f("client-ca.key"), &pki.client_ca.key_pem)?;
        write(&f("service-account.key"), &pki.service_account_key_pem)?;
        write(&f("service-account.pub"), &pki.service_account_pub_pem)?;
        let log = |component: &str| env.log_dir.join(format!("{name}.{component}.log"));

        // The API server; a port stolen between probing and binding is retried.
        let mut attempt = 0;
        let (port, apiserver_spec, apiserver, config) = loop {
            attempt += 1;
            let port = free_port()?;
            let server_url = format!("https://127.0.0.1:{port}");
            let spec = Spec::new(
                format!("{name}/kube-apiserver"),
                env.tools.path("kube-apiserver"),
                log("kube-apiserver"),
            )
            .cwd(&dir)
            .args([
                format!("--etcd-servers={}", env.etcd_url),
                format!("--etcd-prefix=/{name}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                format!("--tls-cert-file={}", f("apiserver.crt").display()),
                format!("--tls-private-key-file={}", f("apiserver.key").display()),
                format!("--client-ca-file={}", f("client-ca.crt").display()),
                format!("--service-account-issuer={server_url}"),
                format!(
                    "--service-account-key-file={}",
                    f("service-account.pub").display()
                ),
                format!(
                    "--service-account-signing-key-file={}",
                    f("service-account.key").display()
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                // The lease reconciler would publish 127.0.0.1 as the
                // endpoint of `kubernetes.default`, which validation rejects.
                "--endpoint-reconciler-type=none".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ])
            .args(env.apiserver_args.iter().cloned());
            let admin_yaml =
                kubeconfig_yaml(&name, &server_url, &pki.server_ca.cert_pem, &pki.admin);
            let config = kube_config_from_yaml(&admin_yaml).await?;
            let mut proc = spec.spawn()?;
            match wait_apiserver_ready(&mut proc, &config, deadline).await {
                Ok(()) => break (port, spec, proc, config),
                Err(e) if attempt < 4 && log_says_port_taken(proc.log()) => {
                    tracing::warn!(%name, port, "kube-apiserver could not bind, retrying: {e:#}");
                    drop(proc);
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        let server_url = format!("https://127.0.0.1:{port}");
        let admin_yaml = kubeconfig_yaml(&name, &server_url, &pki.server_ca.cert_pem, &pki.admin);
        let kubeconfig_path = f("admin.kubeconfig");
        write(&kubeconfig_path, &admin_yaml)?;
        for (file, ck) in [
            (
                "kube-controller-manager.kubeconfig",
                &pki.controller_manager,
            ),
            ("kube-scheduler.kubeconfig", &pki.scheduler),
            ("kwok.kubeconfig", &pki.kwok),
        ] {
            write(
                &f(file),
                &kubeconfig_yaml(&name, &server_url, &pki.server_ca.cert_pem, ck),
            )?;
        }

        let kcm = Spec::new(
            format!("{name}/kube-controller-manager"),
            env.tools.path("kube-controller-manager"),
            log("kube-controller-manager"),
        )
        .cwd(&dir)
        .args([
            format!(
                "--kubeconfig={}",
                f("kube-controller-manager.kubeconfig").display()
            ),
            format!(
                "--service-account-private-key-file={}",
                f("service-account.key").display()
            ),
            format!("--root-ca-file={}", f("server-ca.crt").display()),
            format!(
                "--cluster-signing-cert-file={}",
                f("client-ca.crt").display()
            ),
            format!(
                "--cluster-signing-key-file={}",
                f("client-ca.key").display()
            ),
            format!("--cluster-name={name}"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            "--controllers=*".into(),
            // No serving: nothing scrapes it, and fixed default ports would
            // collide between clusters.
            "--secure-port=0".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        let scheduler = Spec::new(
            format!("{name}/kube-scheduler"),
            env.tools.path("kube-scheduler"),
            log("kube-scheduler"),
        )
        .cwd(&dir)
        .args([
            format!("--kubeconfig={}", f("kube-scheduler.kubeconfig").display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]);
        let kwok = super::kwok::spec(&env.tools, &name, index, &dir, log("kwok"))?;
        let components = if env.apiserver_only {
            Vec::new()
        } else {
            vec![kcm.spawn()?, scheduler.spawn()?, kwok.spawn()?]
        };

        let mut cluster = Cluster {
            index,
            ca_pem: pki.server_ca.cert_pem.clone(),
            kubeconfig_yaml: admin_yaml,
            kubeconfig_path,
            config,
            node_names: Vec::new(),
            apiserver_spec,
            apiserver: Mutex::new(Some(apiserver)),
            components: Mutex::new(components),
            port,
            server_url,
            name,
        };
        if env.apiserver_only {
            // Serving /readyz already; nothing else runs to wait for.
            return Ok(cluster);
        }
        cluster.node_names = (0..env.nodes.max(1))
            .map(|n| format!("{}-node-{n}", cluster.name))
            .collect();
        cluster.register_nodes().await?;
        cluster.wait_ready(deadline).await?;
        Ok(cluster)
    }

    async fn register_nodes(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client());
        for node in &self.node_names {
            let obj: Node = serde_json::from_value(super::kwok::node_manifest(node))?;
            match nodes.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e).with_context(|| format!("create node {node}")),
            }
        }
        Ok(())
    }

    /// Polls until every node is Ready and the `default` service account
    /// exists (pods cannot be created before it does).
    async fn wait_ready(&self, deadline: Instant) -> Result<()> {
        let client = self.client();
        let nodes: Api<Node> = Api::all(client.clone());
        let sas: Api<ServiceAccount> = Api::namespaced(client, "default");
        let mut pending: Vec<&str> = self.node_names.iter().map(String::as_str).collect();
        let mut have_sa = false;
        loop {
            self.ensure_components_running()?;
            let mut still = Vec::new();
            for n in pending {
                let ready = matches!(
                    tokio::time::timeout(Duration::from_secs(5), nodes.get_opt(n)).await,
                    Ok(Ok(Some(node))) if node_is_ready(&node)
                );
                if !ready {
                    still.push(n);
                }
            }
            pending = still;
            if !have_sa {
                have_sa = matches!(
                    tokio::time::timeout(Duration::from_secs(5), sas.get_opt("default")).await,
                    Ok(Ok(Some(_)))
                );
            }
            if pending.is_empty() && have_sa {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: timed out waiting for nodes {pending:?} to be Ready{}",
                    self.name,
                    if have_sa {
                        ""
                    } else {
                        " and for the default service account"
                    }
                );
            }
            poll_interval().await;
        }
    }

    /// Error (with the log tail) if any process of this cluster has died.
    /// A stopped API server ([`Self::stop_apiserver`]) does not count.
    pub fn check_processes(&self) -> Result<()> {
        self.ensure_components_running()
    }

    fn ensure_components_running(&self) -> Result<()> {
        for p in lock(&self.components).iter_mut() {
            p.ensure_running()?;
        }
        if let Some(p) = lock(&self.apiserver).as_mut() {
            p.ensure_running()?;
        }
        Ok(())
    }

    /// Position in the fleet.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `cluster-<index>`; also the name of the kubeconfig's cluster, context
    /// and user.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The API server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PEM of the CA that signed the API server's serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of the admin kubeconfig (the same text as [`Self::kubeconfig_yaml`]).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Admin kubeconfig (CN=admin, O=system:masters) with inline
    /// `certificate-authority-data`, `client-certificate-data` and
    /// `client-key-data`; cluster, context and user are named after the
    /// cluster.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The admin `kube::Config` (5 s connect timeout).
    pub fn kube_config(&self) -> kube::Config {
        self.config.clone()
    }

    /// An admin client. Built afresh on each call, so it belongs to the
    /// calling tokio runtime; must be called inside one.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone()).expect("config was validated at start")
    }

    /// Names of the kwok-managed nodes.
    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    /// `(process name, pid)` of every live process of this cluster.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        if let Some(p) = lock(&self.apiserver).as_mut()
            && p.exited().is_none()
        {
            out.push((p.name().to_string(), p.pid()));
        }
        for p in lock(&self.components).iter_mut() {
            if p.exited().is_none() {
                out.push((p.name().to_string(), p.pid()));
            }
        }
        out
    }

    /// Sum of `VmRSS` over this cluster's processes (etcd not included).
    pub fn rss_bytes(&self) -> u64 {
        self.processes()
            .iter()
            .map(|(_, pid)| rss_bytes(*pid))
            .sum()
    }

    /// Whether the API server process is alive (possibly paused).
    pub fn apiserver_running(&self) -> bool {
        lock(&self.apiserver)
            .as_mut()
            .is_some_and(|p| p.exited().is_none())
    }

    /// SIGKILLs the API server and waits for it to exit. Its port then
    /// refuses connections; everything else keeps running.
    pub async fn stop_apiserver(&self) -> Result<()> {
        let proc = lock(&self.apiserver).take();
        let Some(mut proc) = proc else {
            bail!("{}: kube-apiserver is not running", self.name);
        };
        tokio::task::spawn_blocking(move || proc.kill_and_wait()).await?;
        Ok(())
    }

    /// Starts the API server again with the same port, certificates and etcd
    /// prefix (so the same data), and waits until `/readyz` passes.
    pub async fn start_apiserver(&self) -> Result<()> {
        {
            let mut g = lock(&self.apiserver);
            if let Some(p) = g.as_mut() {
                if p.exited().is_none() {
                    bail!("{}: kube-apiserver is already running", self.name);
                }
                *g = None;
            }
        }
        let mut proc = self.apiserver_spec.spawn()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        wait_apiserver_ready(&mut proc, &self.config, deadline).await?;
        *lock(&self.apiserver) = Some(proc);
        Ok(())
    }

    /// SIGSTOPs the API server: connections are accepted by the kernel but
    /// never answered.
    pub fn pause_apiserver(&self) -> Result<()> {
        self.signal_apiserver(Signal::SIGSTOP)
    }

    /// SIGCONTs a paused API server.
    pub fn resume_apiserver(&self) -> Result<()> {
        self.signal_apiserver(Signal::SIGCONT)
    }

    fn signal_apiserver(&self, sig: Signal) -> Result<()> {
        match lock(&self.apiserver).as_mut() {
            Some(p) => p.signal(sig),
            None => bail!("{}: kube-apiserver is not running", self.name),
        }
    }

    /// SIGKILLs every process group of this cluster without waiting.
    pub(crate) fn start_kill(&self) {
        // SIGKILL also kills a SIGSTOPped (paused) process.
        if let Some(p) = lock(&self.apiserver).as_mut() {
            p.start_kill();
        }
        for p in lock(&self.components).iter_mut() {
            p.start_kill();
        }
    }

    /// Kills and reaps every process of this cluster.
    pub(crate) fn kill_and_wait(&self) {
        if let Some(mut p) = lock(&self.apiserver).take() {
            p.kill_and_wait();
        }
        for mut p in lock(&self.components).drain(..) {
            p.kill_and_wait();
        }
    }

    pub(crate) fn log_files(&self) -> Vec<PathBuf> {
        let mut logs = vec![self.apiserver_spec.log.clone()];
        logs.extend(lock(&self.components).iter().map(|p| p.log().to_path_buf()));
        logs
    }
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls `/readyz` until it answers `ok`, failing early if the process dies.
pub(crate) async fn wait_apiserver_ready(
    proc: &mut Proc,
    config: &kube::Config,
    deadline: Instant,
) -> Result<()> {
    let mut cfg = config.clone();
    cfg.connect_timeout = Some(Duration::from_secs(2));
    cfg.read_timeout = Some(Duration::from_secs(5));
    let client = kube::Client::try_from(cfg)?;
    loop {
        proc.ensure_running()?;
        let req = http::Request::get("/readyz").body(Vec::new())?;
        let last =
            match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => body,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
        if Instant::now() > deadline {
            bail!(
                "{}: /readyz did not pass in time (last: {last}); last lines of {}:\n{}",
                proc.name(),
                proc.log().display(),
                super::process::tail_file(proc.log(), 30)
            );
        }
        poll_interval().await;
    }
}
