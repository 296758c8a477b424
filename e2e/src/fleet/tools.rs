//! Locating the test bed's binaries (kube-apiserver, kube-controller-manager,
//! kube-scheduler, kubectl, etcd, kwok).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

/// Environment variable naming a directory that already holds the binaries.
pub const BIN_ENV: &str = "MESHFED_TESTBED_BIN";

/// The binaries every fleet needs.
pub const REQUIRED: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "etcd",
    "kwok",
];

/// Where the binaries live.
#[derive(Debug, Clone)]
pub struct Tools {
    bin: PathBuf,
}

impl Tools {
    /// The bin directory.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Full path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn check(bin: PathBuf) -> Result<Tools> {
        let missing: Vec<&str> = REQUIRED
            .iter()
            .copied()
            .filter(|b| !bin.join(b).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "test bed binaries {missing:?} missing from {}; run `make testbed-tools` \
                 (or `bash e2e/testbed/build-tools.sh`) and/or set {BIN_ENV}",
                bin.display()
            );
        }
        Ok(Tools { bin })
    }
}

/// The build script, located relative to this crate.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/build-tools.sh")
}

static TOOLS: OnceCell<Tools> = OnceCell::const_new();

/// Finds the binaries: `$MESHFED_TESTBED_BIN` if set, else whatever
/// `e2e/testbed/build-tools.sh` prints (instant when its cache is warm; a
/// cold cache builds everything, which takes a long while). The answer is
/// cached for the life of the process, so parallel tests run the script once.
pub async fn tools() -> Result<Tools> {
    TOOLS.get_or_try_init(locate).await.cloned()
}

async fn locate() -> Result<Tools> {
    if let Some(dir) = std::env::var_os(BIN_ENV).filter(|d| !d.is_empty()) {
        return Tools::check(PathBuf::from(dir));
    }
    let script = build_script();
    let hint = || {
        format!(
            "could not obtain the test bed binaries from `bash {}`; run `make testbed-tools` \
             (needs Go and the Go module proxy) or point {BIN_ENV} at a directory holding {REQUIRED:?}",
            script.display()
        )
    };
    let dir = testbed_script_output("build-tools.sh")
        .await
        .with_context(hint)?;
    Tools::check(dir).with_context(hint)
}

/// Runs `e2e/testbed/<name>` (instant when its cache is warm) and returns the
/// path on the last line it printed.
pub async fn testbed_script_output(name: &str) -> Result<PathBuf> {
    testbed_script_output_with(name, &[]).await
}

/// [`testbed_script_output`] with arguments.
pub async fn testbed_script_output_with(name: &str, args: &[&str]) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testbed")
        .join(name);
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} exited with {}", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .with_context(|| format!("{} printed nothing", script.display()))?;
    Ok(PathBuf::from(line))
}
