//! How the operator behaves: its command-line settings, shared by the
//! federation controller and every member's worker.
use std::time::Duration;

/// How the controller behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace holding member credentials and generated roots.
    pub namespace: String,
    /// Reconcile every federation at least this often (tokens, health, drift).
    pub resync: Duration,
    /// Give up on a member's step after this long.
    pub member_timeout: Duration,
    /// The `helm` binary that renders Istio's charts.
    pub helm: std::path::PathBuf,
    /// Istio chart sets, one directory per version (`<dir>/<version>/base`, ...).
    pub charts_dir: std::path::PathBuf,
}

impl Settings {
    /// The defaults `meshfed-operator --help` shows, for the given namespace.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            resync: Duration::from_secs(60),
            member_timeout: Duration::from_secs(10),
            helm: "helm".into(),
            charts_dir: "/charts".into(),
        }
    }
}
