//! An HTTPS load balancer in front of one member's API server: it
//! terminates TLS with a CA of its own (which the member's kubeconfig then
//! trusts), and re-encrypts each connection to the API server. Told that the
//! server behind it is down, it drops what it was forwarding and answers
//! every request with a `502 Bad Gateway` HTML page, as cloud load
//! balancers do: an HTTP answer that does not come from the API server.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use base64::Engine as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Cluster;

const BAD_GATEWAY: &str = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>";

pub struct ApiProxy {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The proxy's own CA.
    pub ca_pem: String,
    down: Arc<AtomicBool>,
    /// Bumped when the server goes down: forwarded connections end.
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiProxy {
    pub async fn start(cluster: &Cluster) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "e2e load balancer CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?
            .signed_by(&key, &issuer)?;
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls_pemfile::certs(&mut cluster.ca_pem().as_bytes()) {
            roots.add(der?)?;
        }
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let upstream = cluster
            .server_url()
            .strip_prefix("https://")
            .context("API server URL without https://")?
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let forward = Forward {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server_config)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client_config)),
            upstream,
            down: down.clone(),
            cut: cut.clone(),
        };
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let forward = forward.clone();
                tokio::spawn(async move {
                    let _ = forward.serve(conn).await;
                });
            }
        });
        Ok(Self {
            url,
            ca_pem: ca.pem(),
            down,
            cut,
            task,
        })
    }

    /// The API server behind the proxy goes down (`true`) or comes back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// `kubeconfig` (a token kubeconfig of the member) pointed at the proxy.
    pub fn kubeconfig(&self, kubeconfig: &str) -> Result<String> {
        let mut config: serde_json::Value = serde_yaml::from_str(kubeconfig)?;
        for cluster in config["clusters"]
            .as_array_mut()
            .context("kubeconfig without clusters")?
        {
            cluster["cluster"]["server"] = self.url.clone().into();
            cluster["cluster"]["certificate-authority-data"] =
                base64::engine::general_purpose::STANDARD
                    .encode(&self.ca_pem)
                    .into();
        }
        Ok(serde_yaml::to_string(&config)?)
    }
}

#[derive(Clone)]
struct Forward {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    upstream: String,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Forward {
    async fn serve(&self, conn: TcpStream) -> Result<()> {
        let mut client = self.acceptor.accept(conn).await?;
        if self.down.load(Ordering::SeqCst) {
            return bad_gateway(&mut client).await;
        }
        let mut cut = self.cut.subscribe();
        let tcp = TcpStream::connect(&self.upstream).await?;
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        let mut server = self.connector.connect(name, tcp).await?;
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
            _ = cut.changed() => {}
        }
        Ok(())
    }
}

/// Reads a request head and answers 502 with an HTML page, once per
/// request on the connection.
async fn bad_gateway<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    client: &mut S,
) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let answer = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BAD_GATEWAY}",
        BAD_GATEWAY.len()
    );
    client.write_all(answer.as_bytes()).await?;
    client.flush().await?;
    Ok(())
}
