//! Watching every member's `cacerts` through a root rotation: the distinct
//! states each went through, and every moment at which one member's
//! intermediate chained to a root that another member's bundle lacked (a
//! trust gap: workloads of the two would reject each other).
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use meshfed::pki::inspect_bundle;

/// (serials of `root-cert.pem`, serial of the root `cert-chain.pem` ends with)
pub type CaState = (Vec<String>, String);

/// The serial of a `cacerts` Secret's intermediate (`ca-cert.pem`).
pub fn intermediate_serial(secret: &Secret) -> Result<String> {
    let pem = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca-cert.pem"))
        .ok_or_else(|| anyhow::anyhow!("cacerts without ca-cert.pem"))?;
    Ok(meshfed::pki::inspect(std::str::from_utf8(&pem.0)?)?.serial)
}

/// A member's `cacerts` as a [`CaState`].
pub fn state_of(secret: &Secret) -> Option<CaState> {
    let text = |k: &str| String::from_utf8(secret.data.as_ref()?.get(k)?.0.clone()).ok();
    let roots = inspect_bundle(&text("root-cert.pem")?).ok()?;
    let chain = inspect_bundle(&text("cert-chain.pem")?).ok()?;
    Some((
        roots.into_iter().map(|r| r.serial).collect(),
        chain.last()?.serial.clone(),
    ))
}

#[derive(Default)]
struct Seen {
    states: BTreeMap<usize, Vec<CaState>>,
    gaps: Vec<String>,
}

/// Samples every member's `cacerts` every 100 ms until dropped. A member
/// whose API server does not answer keeps its last state (only meshfed
/// writes `cacerts`, through that same API server).
pub struct CacertsWatch {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl CacertsWatch {
    pub fn start(clients: Vec<Client>) -> Self {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    for (i, c) in clients.iter().enumerate() {
                        let api = Api::<Secret>::namespaced(c.clone(), "istio-system");
                        let read = tokio::time::timeout(
                            Duration::from_millis(500),
                            api.get_opt("cacerts"),
                        );
                        if let Ok(Ok(Some(s))) = read.await
                            && let Some(state) = state_of(&s)
                        {
                            let mut seen = seen.lock().unwrap();
                            let states = seen.states.entry(i).or_default();
                            if states.last() != Some(&state) {
                                states.push(state);
                            }
                        }
                    }
                    {
                        let mut seen = seen.lock().unwrap();
                        let gaps = trust_gaps(&seen.states);
                        seen.gaps.extend(gaps);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        CacertsWatch { seen, task }
    }

    /// Starts watching, and waits until every member's `cacerts` was seen.
    pub async fn start_seeing_all(clients: Vec<Client>) -> Result<Self> {
        let n = clients.len();
        let watch = Self::start(clients);
        crate::mesh::poll(
            Duration::from_secs(60),
            "every member's cacerts seen",
            || async { Ok(watch.members_seen() == n) },
        )
        .await?;
        Ok(watch)
    }

    /// How many members were seen so far.
    pub fn members_seen(&self) -> usize {
        self.seen.lock().unwrap().states.len()
    }

    /// The latest state of each member.
    pub fn latest(&self) -> BTreeMap<usize, CaState> {
        let seen = self.seen.lock().unwrap();
        seen.states
            .iter()
            .filter_map(|(i, s)| Some((*i, s.last()?.clone())))
            .collect()
    }

    /// The states each member went through since the last call (starting
    /// from the one it was in then).
    pub fn take(&self) -> BTreeMap<usize, Vec<CaState>> {
        let mut seen = self.seen.lock().unwrap();
        let out = seen.states.clone();
        for states in seen.states.values_mut() {
            let last = states.pop();
            states.clear();
            states.extend(last);
        }
        out
    }

    /// Every trust gap seen so far, described.
    pub fn gaps(&self) -> Vec<String> {
        self.seen.lock().unwrap().gaps.clone()
    }

    /// Checks that each of the first `members` went exactly through a
    /// rotation's four states from root `old` to root `new` since the last
    /// [`CacertsWatch::take`]: (old), (old + new, signed by old), (old +
    /// new, signed by new), (new).
    pub fn expect_rotation(&self, members: usize, old: &str, new: &str) -> Result<()> {
        let seen = self.take();
        let (o, n) = (old.to_string(), new.to_string());
        let expected: Vec<CaState> = vec![
            (vec![o.clone()], o.clone()),
            (vec![o.clone(), n.clone()], o.clone()),
            (vec![o.clone(), n.clone()], n.clone()),
            (vec![n.clone()], n.clone()),
        ];
        for i in 0..members {
            ensure!(
                seen.get(&i) == Some(&expected),
                "member {i}: {:#?}",
                seen.get(&i)
            );
        }
        Ok(())
    }
}

impl Drop for CacertsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Each pair of members where the first's intermediate chains to a root
/// the second's bundle lacks.
fn trust_gaps(states: &BTreeMap<usize, Vec<CaState>>) -> Vec<String> {
    let latest: Vec<(usize, &CaState)> = states
        .iter()
        .filter_map(|(i, s)| Some((*i, s.last()?)))
        .collect();
    let mut gaps = Vec::new();
    for (i, (_, chain_root)) in &latest {
        for (j, (bundle, _)) in &latest {
            if !bundle.contains(chain_root) {
                gaps.push(format!(
                    "member {i} chains to root {chain_root}, which member {j} does not trust ({bundle:?})"
                ));
            }
        }
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bundle: &[&str], chain: &str) -> Vec<CaState> {
        vec![(bundle.iter().map(|b| b.to_string()).collect(), chain.into())]
    }

    #[test]
    fn a_gap_is_a_chain_to_a_root_some_member_does_not_trust() {
        let ok = BTreeMap::from([(0, s(&["a", "b"], "b")), (1, s(&["a", "b"], "a"))]);
        assert!(trust_gaps(&ok).is_empty());
        let gap = BTreeMap::from([(0, s(&["a", "b"], "b")), (1, s(&["a"], "a"))]);
        assert_eq!(trust_gaps(&gap).len(), 1);
    }
}
