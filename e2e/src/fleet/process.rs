//! Child processes that cannot outlive the fleet.
//!
//! Every child runs in its own process group (so a signal reaches it and
//! anything it forks) and has `PR_SET_PDEATHSIG=SIGKILL`, so the kernel kills
//! it when its parent goes away, even if the test runner is SIGKILLed.
//!
//! Linux delivers the parent-death signal when the *thread* that forked the
//! child exits, not the process. Tokio's blocking-pool threads and a test's
//! runtime threads come and go, so all children are forked from one
//! dedicated thread that lives as long as the process.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

type Job = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("meshfed-fleet-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop (and with it the
                // parent thread of every child) lasts until the process exits.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the fleet spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_from_spawner(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| io::Error::other("fleet spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("fleet spawner thread is gone"))?
}

/// A running (or exited) child process with its own process group.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

/// How to run a process again: program, arguments, log file.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(OsString, OsString)>,
}

impl Spec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, log: PathBuf) -> Spec {
        Spec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            log,
            cwd: None,
            env: Vec::new(),
        }
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Spec {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Spec {
        self.cwd = Some(dir.into());
        self
    }

    /// Starts the process; its stdout and stderr are appended to the log.
    pub fn spawn(&self) -> Result<Proc> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open log {}", self.log.display()))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        writeln!(
            log,
            "=== [meshfed testbed] starting {} at unix time {secs}: {} {}",
            self.name,
            self.program.display(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0);
        // Optional knobs for squeezing many clusters onto a small machine.
        for (ours, go) in [
            ("MESHFED_TESTBED_GOMAXPROCS", "GOMAXPROCS"),
            ("MESHFED_TESTBED_GOGC", "GOGC"),
        ] {
            if let Some(v) = std::env::var_os(ours) {
                cmd.env(go, v);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawn_from_spawner(cmd)
            .with_context(|| format!("spawn {} ({})", self.name, self.program.display()))?;
        Ok(Proc {
            name: self.name.clone(),
            child,
            log: self.log.clone(),
            reaped: None,
        })
    }
}

impl Proc {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// Sends `sig` to the process group.
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.exited().is_some() {
            anyhow::bail!("{} has already exited", self.name);
        }
        killpg(Pid::from_raw(self.child.id() as i32), sig)
            .with_context(|| format!("send {sig} to {}", self.name))
    }

    /// SIGKILLs the process group without waiting.
    pub fn start_kill(&mut self) {
        if self.reaped.is_none() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        }
    }

    /// SIGKILLs the process group and reaps the process.
    pub fn kill_and_wait(&mut self) {
        if self.reaped.is_none() {
            self.start_kill();
            self.reaped = self.child.wait().ok();
        }
    }

    /// Error if the process has exited, with the tail of its log.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                tail_file(&self.log, 30)
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// The last `lines` lines of a file (best effort).
pub fn tail_file(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let window = (lines as u64 * 400).max(4096);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(window)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a log says a listener could not bind (a port race we can retry).
pub fn log_says_port_taken(path: &Path) -> bool {
    let t = tail_file(path, 60);
    t.contains("address already in use") || t.contains("bind: address")
}

/// A free TCP port on 127.0.0.1. Ports handed out by this process are never
/// handed out again, so concurrent fleets in one test binary cannot collide;
/// collisions with other processes are possible but rare and callers retry.
pub fn free_port() -> Result<u16> {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if given.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found")
}

/// Resident set size of a process in bytes (`VmRSS` from /proc), 0 if gone.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// Peak resident set size of a process (its high-water mark), in bytes.
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// Resident set size of a process and all its descendants, in bytes: what
/// a container's memory limit sees of an operator that runs `helm template`.
pub fn tree_rss_bytes(pid: u32) -> u64 {
    rss_bytes(pid) + children(pid).into_iter().map(tree_rss_bytes).sum::<u64>()
}

/// The children of every thread of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The highest [`tree_rss_bytes`] of a process, sampled every 10 ms on a
/// thread of its own until dropped (short-lived children such as a `helm
/// template` run live for hundreds of milliseconds).
pub struct TreeRssPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl TreeRssPeak {
    pub fn watch(pid: u32) -> TreeRssPeak {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let sampler = std::thread::spawn(move || {
            while !s.load(Relaxed) {
                p.fetch_max(tree_rss_bytes(pid), Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        TreeRssPeak {
            stop,
            peak,
            sampler: Some(sampler),
        }
    }

    pub fn peak_bytes(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TreeRssPeak {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
    }
}

/// A kB figure from /proc/<pid>/status; 0 when the process is gone.
fn status_kib(pid: u32, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// The pause between two readiness probes.
pub async fn poll_interval() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}
