//! The fleet's single etcd; every API server keeps its data under its own
//! `--etcd-prefix`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::{Proc, Spec, free_port, log_says_port_taken, poll_interval, tail_file};
use super::tools::Tools;

pub(crate) struct Etcd {
    pub url: String,
    pub proc: Proc,
}

impl Etcd {
    pub async fn start(tools: &Tools, dir: &Path, log: &Path, timeout: Duration) -> Result<Etcd> {
        let deadline = Instant::now() + timeout;
        let data = dir.join("etcd-data");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = free_port()?;
            let peer = free_port()?;
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let spec = Spec::new("etcd", tools.path("etcd"), log.to_path_buf())
                .cwd(dir)
                .args([
                    "--name=fleet".to_string(),
                    format!("--data-dir={}", data.display()),
                    format!("--listen-client-urls={url}"),
                    format!("--advertise-client-urls={url}"),
                    format!("--listen-peer-urls={peer_url}"),
                    format!("--initial-advertise-peer-urls={peer_url}"),
                    format!("--initial-cluster=fleet={peer_url}"),
                    "--initial-cluster-state=new".into(),
                    // Throwaway data: durability buys nothing here.
                    "--unsafe-no-fsync=true".into(),
                    "--quota-backend-bytes=4294967296".into(),
                    "--log-level=warn".into(),
                ]);
            let mut proc = spec.spawn()?;
            match wait_healthy(&mut proc, client, deadline).await {
                Ok(()) => return Ok(Etcd { url, proc }),
                Err(e) if attempt < 4 && log_says_port_taken(proc.log()) => {
                    tracing::warn!("etcd could not bind, retrying: {e:#}");
                    drop(proc);
                    let _ = std::fs::remove_dir_all(&data);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn health(port: u16) -> Result<bool> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    Ok(text.contains("\"health\":\"true\""))
}

async fn wait_healthy(proc: &mut Proc, port: u16, deadline: Instant) -> Result<()> {
    loop {
        proc.ensure_running()?;
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(3), health(port)).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "etcd did not become healthy in time; last lines of {}:\n{}",
                proc.log().display(),
                tail_file(proc.log(), 30)
            );
        }
        poll_interval().await;
    }
}
