//! Workloads of the mesh without a data plane: what an Istio sidecar does
//! with its certificate, done in-process against the real istiod.
//!
//! - [`SecretProjection`] puts a Secret on disk the way the kubelet mounts a
//!   Secret volume (its AtomicWriter: files are symlinks through `..data`,
//!   a symlink to a timestamped directory that is swapped with a rename), so
//!   an out-of-cluster istiod reloads its plug-in CA exactly as in a pod.
//! - [`mint`] asks an istiod's CA for a workload certificate over gRPC
//!   (`IstioCertificateService/CreateCertificate` on its secure gRPC port),
//!   authenticated with a ServiceAccount token of audience `istio-ca`.
//! - [`handshake`] runs a real mTLS handshake (rustls) between two
//!   workloads, each side trusting the roots its own istiod distributes and
//!   checking the chain and the peer's SPIFFE ID, as Istio's proxies do:
//!   workload certificates carry no DNS name.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// A Secret kept on disk as the kubelet keeps a Secret volume, until dropped.
pub struct SecretProjection {
    task: JoinHandle<()>,
    dir: PathBuf,
}

impl SecretProjection {
    /// Writes Secret `namespace/name` into `dir` once it exists, then again
    /// whenever it changes (polled every 200 ms; the kubelet's own refresh
    /// is slower). Returns after the first write.
    pub async fn start(client: Client, namespace: &str, name: &str, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let api = Api::<Secret>::namespaced(client, namespace);
        let name = name.to_string();
        let first = loop {
            if let Some(s) = api.get_opt(&name).await? {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        project(dir, first.data.as_ref().unwrap_or(&BTreeMap::new()))?;
        let mut version = first.metadata.resource_version.clone();
        let target = dir.to_path_buf();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let Ok(Some(s)) = api.get_opt(&name).await else {
                    continue;
                };
                if s.metadata.resource_version != version {
                    if let Err(e) = project(&target, s.data.as_ref().unwrap_or(&BTreeMap::new())) {
                        eprintln!("projecting {name} into {}: {e}", target.display());
                        continue;
                    }
                    version = s.metadata.resource_version.clone();
                }
            }
        });
        Ok(Self {
            task,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SecretProjection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One AtomicWriter update: the new payload in a fresh directory, `..data`
/// switched to it by renaming a new symlink over it, a `<key>` symlink
/// through `..data` for every key, and the previous directory removed.
fn project(dir: &Path, data: &BTreeMap<String, ByteString>) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (key, value) in data {
        std::fs::write(fresh.join(key), &value.0)?;
    }
    let previous = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    for key in data.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(key), &link)?;
        }
    }
    if let Some(old) = previous.filter(|p| p.as_os_str() != stamp.as_str()) {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

/// A workload's identity and credentials, as its sidecar would hold them.
#[derive(Clone)]
pub struct Workload {
    pub spiffe_id: String,
    /// Leaf, intermediate, and the root that signed the intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The roots istiod sent with it (its whole trust bundle).
    pub served_roots: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
}

impl Workload {
    /// When the Istio agent would renew it: half of its life.
    pub fn renew_at(&self) -> jiff::Timestamp {
        self.not_before + self.not_after.duration_since(self.not_before) / 2
    }

    /// The issuer of its leaf: the intermediate that signed it.
    pub fn issuer(&self) -> String {
        subject_of(&self.chain[1])
    }
}

fn subject_of(cert: &CertificateDer) -> String {
    x509_parser::parse_x509_certificate(cert)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default()
}

/// A token of ServiceAccount `namespace/name` for istiod's CA (audience
/// `istio-ca`), as the kubelet projects it into a pod.
pub async fn ca_token(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["istio-ca".into()],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .context("TokenRequest without status")?
        .token)
}

/// `istio.v1.auth.IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct IstioCertificateRequest {
    #[prost(string, tag = "1")]
    csr: String,
    #[prost(int64, tag = "3")]
    validity_duration: i64,
}

/// `istio.v1.auth.IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    cert_chain: Vec<String>,
}

/// A workload certificate for `spiffe://<trust_domain>/ns/<ns>/sa/<sa>`
/// from the CA of the istiod at `addr` (its secure gRPC port), whose serving
/// certificate is checked against `roots_pem` (the `root-cert.pem` its
/// ConfigMap distributes); `token` is the workload's `istio-ca` token.
pub async fn mint(
    addr: SocketAddr,
    roots_pem: &str,
    token: &str,
    spiffe_id: &str,
    ttl: Duration,
) -> Result<Workload> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;

    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(roots_pem))
        .domain_name("istiod.istio-system.svc");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connecting to istiod's secure gRPC port")?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: ttl.as_secs() as i64,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let path = http::uri::PathAndQuery::from_static(
        "/istio.v1.auth.IstioCertificateService/CreateCertificate",
    );
    let response: tonic::Response<IstioCertificateResponse> = grpc
        .unary(request, path, tonic_prost::ProstCodec::default())
        .await
        .context("CreateCertificate")?;
    // [leaf, cert-chain.pem (intermediate and its root), root-cert.pem]
    let pems = response.into_inner().cert_chain;
    let Some((bundle, chain_pems)) = pems.split_last() else {
        bail!("CreateCertificate returned nothing");
    };
    let mut chain = Vec::new();
    for pem in chain_pems {
        for der in rustls_pemfile::certs(&mut pem.as_bytes()) {
            chain.push(der?);
        }
    }
    if chain.len() < 3 {
        bail!(
            "CreateCertificate returned a chain of {} certificates",
            chain.len()
        );
    }
    let served_roots = roots(bundle)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])?;
    let time = |t: x509_parser::time::ASN1Time| jiff::Timestamp::from_second(t.timestamp());
    Ok(Workload {
        spiffe_id: spiffe_id.into(),
        not_before: time(leaf.validity().not_before)?,
        not_after: time(leaf.validity().not_after)?,
        chain,
        served_roots,
        key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
    })
}

/// The roots in a PEM bundle.
pub fn roots(bundle_pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    rustls_pemfile::certs(&mut bundle_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing a root bundle")
}

/// The URI SANs of a certificate.
fn uri_sans(cert: &CertificateDer) -> Vec<String> {
    let Ok((_, c)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = c.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Checks a peer's chain against `roots` for `usage` and its SPIFFE ID
/// against `expected`, as Istio's proxies do (no DNS names).
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Vec<rustls::pki_types::TrustAnchor<'static>>,
    expected: String,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    fn new(roots: &[CertificateDer<'static>], expected: &str) -> Result<Self> {
        let anchors = roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("bad root: {e:?}"))?;
        Ok(Self {
            roots: anchors,
            expected: expected.into(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    fn verify(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("{e:?}")))?;
        cert.verify_for_usage(
            self.algorithms.all,
            &self.roots,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| rustls::Error::General(format!("chain: {e:?}")))?;
        let ids = uri_sans(end_entity);
        if !ids.contains(&self.expected) {
            return Err(rustls::Error::General(format!(
                "peer is {ids:?}, expected {}",
                self.expected
            )));
        }
        Ok(())
    }
}

/// The handshake-signature checks both verifier traits ask for, the same
/// for a client and a server.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

impl rustls::client::danger::ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

impl rustls::server::danger::ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// An mTLS handshake from `client` to `server` (in memory), each trusting
/// its own roots, then one byte each way. The chain (leaf and
/// intermediate, as a sidecar presents it) and the SPIFFE IDs are checked
/// on both sides.
pub async fn handshake(
    client: &Workload,
    client_roots: &[CertificateDer<'static>],
    server: &Workload,
    server_roots: &[CertificateDer<'static>],
) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let presented = |w: &Workload| w.chain[..w.chain.len() - 1].to_vec();
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(SpiffeVerifier::new(
            server_roots,
            &client.spiffe_id,
        )?))
        .with_single_cert(presented(server), server.key.clone_key())?;
    let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeVerifier::new(
            client_roots,
            &server.spiffe_id,
        )?))
        .with_client_auth_cert(presented(client), client.key.clone_key())?;
    client_config.enable_sni = false;
    let (a, b) = tokio::io::duplex(16 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let serve = async move {
        let mut s = acceptor.accept(b).await?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await?;
        s.write_all(&byte).await?;
        s.flush().await?;
        anyhow::Ok(())
    };
    let call = async move {
        let mut c = connector
            .connect(ServerName::try_from("workload")?.to_owned(), a)
            .await?;
        c.write_all(b"x").await?;
        c.flush().await?;
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await?;
        anyhow::Ok(())
    };
    let (served, called) =
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(serve, call) })
            .await
            .context("handshake timed out")?;
    served.context("server side")?;
    called.context("client side")?;
    Ok(())
}

/// What the tests with real istiods and workloads start from: Istio built
/// and its CRDs at hand, a fleet of `n` clusters with cluster 0 prepared as
/// the operator's, its log tails (dropped before the fleet), and an admin
/// client per cluster.
pub async fn istiod_fleet(n: usize) -> Result<(crate::LogTailGuard, crate::Fleet, Vec<Client>)> {
    crate::istiod::istio().await?;
    crate::istiod::base_crds().await?;
    let fleet = crate::Fleet::start(n).await?;
    let logs = fleet.log_guard();
    let clients = fleet.clusters().iter().map(|c| c.client()).collect();
    crate::mesh::prepare_host(&fleet).await?;
    Ok((logs, fleet, clients))
}

/// A workload in one member, as its sidecar would run: the member's istiod
/// (with `cacerts` projected), an `istio-ca` token of its own
/// ServiceAccount, the roots that istiod distributes (refreshed, as a proxy
/// receives them), and a certificate renewed at half its life.
pub struct MemberWorkload {
    pub istiod: crate::istiod::Istiod,
    client: Client,
    token: String,
    pub spiffe_id: String,
    ttl: Duration,
    roots_pem: tokio::sync::Mutex<String>,
    current: tokio::sync::Mutex<Option<Workload>>,
}

impl MemberWorkload {
    /// Starts istiod for member `cluster` (`network`, mesh `mesh1`) in
    /// `work_dir`, and a workload `default/workload-<name>` there.
    pub async fn start(
        cluster: &crate::Cluster,
        network: &str,
        work_dir: &Path,
        ttl: Duration,
    ) -> Result<Self> {
        let mut options = crate::istiod::IstiodOptions::new(cluster.name(), network, "mesh1");
        options.project_cacerts = true;
        let istiod = crate::istiod::Istiod::start_with(cluster, options, work_dir).await?;
        let client = cluster.client();
        let account = format!("workload-{}", cluster.name());
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": account}}))?;
        let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
        if accounts.get_opt(&account).await?.is_none() {
            accounts.create(&PostParams::default(), &sa).await?;
        }
        let token = ca_token(&client, "default", &account).await?;
        let roots_pem = distributed_roots(&client, Duration::from_secs(60)).await?;
        let w = MemberWorkload {
            istiod,
            client,
            token,
            spiffe_id: format!("spiffe://cluster.local/ns/default/sa/{account}"),
            ttl,
            roots_pem: tokio::sync::Mutex::new(roots_pem),
            current: tokio::sync::Mutex::new(None),
        };
        w.certificate().await?;
        Ok(w)
    }

    /// A new certificate from its istiod.
    pub async fn mint(&self) -> Result<Workload> {
        let roots = self.roots_pem.lock().await.clone();
        mint(
            self.istiod.secure_grpc_addr(),
            &roots,
            &self.token,
            &self.spiffe_id,
            self.ttl,
        )
        .await
    }

    /// Its certificate, renewed first if past half its life (the agent's
    /// rule).
    pub async fn certificate(&self) -> Result<Workload> {
        let mut current = self.current.lock().await;
        match current.as_ref() {
            Some(w) if jiff::Timestamp::now() < w.renew_at() => Ok(w.clone()),
            _ => {
                let w = self.mint().await?;
                *current = Some(w.clone());
                Ok(w)
            }
        }
    }

    /// The roots it trusts now.
    pub async fn roots(&self) -> Vec<CertificateDer<'static>> {
        roots(&self.roots_pem.lock().await).unwrap_or_default()
    }

    /// Takes the roots its istiod distributes now (kept if unreadable).
    pub async fn refresh_roots(&self) {
        if let Ok(pem) = distributed_roots(&self.client, Duration::ZERO).await {
            *self.roots_pem.lock().await = pem;
        }
    }
}

/// The roots istiod distributes to workloads in namespace `default` (its
/// `istio-ca-root-cert`), waiting up to `wait` for them to appear.
pub async fn distributed_roots(client: &Client, wait: Duration) -> Result<String> {
    let maps = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "default");
    let deadline = std::time::Instant::now() + wait;
    loop {
        let found = maps
            .get_opt("istio-ca-root-cert")
            .await?
            .and_then(|m| m.data?.get("root-cert.pem").cloned());
        match found {
            Some(pem) => return Ok(pem),
            None if std::time::Instant::now() >= deadline => {
                bail!("no istio-ca-root-cert in default")
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Handshakes between the workloads of every ordered pair of members, over
/// and over until finished, with roots refreshed before each round. A
/// certificate that cannot be renewed (its istiod unreachable) skips the
/// pair: only a handshake that fails counts as a failure.
pub struct Sampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    done: Arc<std::sync::atomic::AtomicUsize>,
    failures: Arc<tokio::sync::Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    pub fn start(members: Vec<Arc<MemberWorkload>>) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let task = {
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for m in &members {
                        m.refresh_roots().await;
                    }
                    for (i, a) in members.iter().enumerate() {
                        for (_, b) in members.iter().enumerate().filter(|(j, _)| *j != i) {
                            let (Ok(client), Ok(server)) =
                                (a.certificate().await, b.certificate().await)
                            else {
                                continue;
                            };
                            match handshake(&client, &a.roots().await, &server, &b.roots().await)
                                .await
                            {
                                Ok(()) => {
                                    done.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => failures.lock().await.push(format!(
                                    "{} -> {} at {}: {e:#}",
                                    a.spiffe_id,
                                    b.spiffe_id,
                                    jiff::Timestamp::now()
                                )),
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Sampler {
            stop,
            done,
            failures,
            task,
        }
    }

    /// Handshakes that succeeded so far.
    pub fn handshakes(&self) -> usize {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops; the handshakes that succeeded, and every failure.
    pub async fn finish(self) -> Result<(usize, Vec<String>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await?;
        let failures = self.failures.lock().await.clone();
        Ok((
            self.done.load(std::sync::atomic::Ordering::Relaxed),
            failures,
        ))
    }
}

/// A workload certificate for `spiffe_id` signed with the intermediate in
/// a `cacerts` Secret, as whoever holds that Secret (its cluster, or a
/// copy taken from it) can sign one, without istiod.
pub fn sign_with_cacerts(
    cacerts: &k8s_openapi::api::core::v1::Secret,
    spiffe_id: &str,
) -> Result<Workload> {
    let text = |key: &str| -> Result<String> {
        let data = cacerts.data.as_ref().context("cacerts without data")?;
        Ok(String::from_utf8(
            data.get(key)
                .with_context(|| format!("cacerts without {key}"))?
                .0
                .clone(),
        )?)
    };
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &text("ca-cert.pem")?,
        rcgen::KeyPair::from_pem(&text("ca-key.pem")?)?,
    )?;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into()?)];
    // rcgen's default validity (1975 to 4096): the leaf is judged by its chain.
    let (not_before, not_after) = (
        "1975-01-01T00:00:00Z".parse()?,
        "4096-01-01T00:00:00Z".parse()?,
    );
    let leaf = params.signed_by(&key, &issuer)?;
    let mut chain = vec![leaf.der().clone()];
    chain.extend(roots(&text("cert-chain.pem")?)?);
    Ok(Workload {
        spiffe_id: spiffe_id.into(),
        chain,
        served_roots: roots(&text("root-cert.pem")?)?,
        key: Arc::new(PrivateKeyDer::Pkcs8(key.serialize_der().into())),
        not_before,
        not_after,
    })
}
