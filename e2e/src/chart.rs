//! The operator's Helm chart (charts/meshfed-operator) as the packaging and
//! alerts tests render it: the workspace's paths, a program runner that
//! gives helm throwaway state of its own, and `helm template` into
//! documents.
//!
//! The binaries come from the test bed's own lookups
//! ([`crate::istiod::helm`], [`crate::fleet::tools`]); these helpers take
//! the path they found.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

use crate::mesh::OPERATOR_NAMESPACE;

/// The release name the docs install the chart as.
pub const RELEASE: &str = "meshfed";

/// The repository's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// charts/meshfed-operator.
pub fn chart_dir() -> PathBuf {
    workspace().join("charts/meshfed-operator")
}

/// Runs `program` in `dir`, with helm's own state (repositories, cache,
/// plugins) in a throwaway directory so that it never reads or writes the
/// user's: Ok(stdout) on success, Err(the whole story: command, status,
/// stdout and stderr) otherwise.
pub fn run(program: &Path, args: &[&str], dir: &Path) -> Result<String, String> {
    run_with_stdin(program, args, dir, None)
}

/// [`run`], with `stdin` (if any) as the program's input.
pub fn run_with_stdin(
    program: &Path,
    args: &[&str],
    dir: &Path,
    stdin: Option<&str>,
) -> Result<String, String> {
    let home = tempfile::tempdir().expect("a throwaway helm home");
    let home = home.path();
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {} failed ({}):\n{stdout}\n{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs `helm` (the path [`crate::istiod::helm`] found) in the workspace,
/// with throwaway state: see [`run`].
pub fn helm(helm: &Path, args: &[&str]) -> Result<String, String> {
    run(helm, args, &workspace())
}

/// `helm template meshfed charts/meshfed-operator --namespace
/// meshfed-system` plus `extra`: the rendered YAML stream, or helm's
/// complaint.
pub fn template(helm_path: &Path, extra: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        OPERATOR_NAMESPACE,
    ];
    args.extend_from_slice(extra);
    helm(helm_path, &args)
}

/// [`template`], as its objects.
pub fn render(helm_path: &Path, extra: &[&str]) -> Result<Vec<Value>, String> {
    template(helm_path, extra).map(|yaml| documents(&yaml))
}

/// Every non-empty document of a YAML stream, as JSON.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}
