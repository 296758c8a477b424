//! Root rotation across the fleet, in phases that each finish in every
//! member before the next starts (docs/rotation.md):
//!
//! 1. **TrustBoth**: every `root-cert.pem` holds the old and the new root;
//!    intermediates stay. Done when every istiod distributes both; then the
//!    propagation period, for proxies to receive them.
//! 2. **SignWithNew**: intermediates re-issued from the new root.
//! 3. **Drain**: nothing changes; the drain period, for workload
//!    certificates signed under the old root to expire or be re-issued.
//! 4. **TrustNew**: the old root leaves every bundle.
//!
//! Every bundle change is a superset or a subset of the one before, the only
//! changes istiod accepts. Where the rotation stands is kept in the record
//! ([`CaRecord`], the ConfigMap `meshfed-ca-<federation>`), written before
//! anything in a member changes, so an operator killed at any point resumes
//! exactly there. Nothing here does I/O.
use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

/// A phase of a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    TrustBoth,
    SignWithNew,
    Drain,
    TrustNew,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::TrustBoth => "TrustBoth",
            Phase::SignWithNew => "SignWithNew",
            Phase::Drain => "Drain",
            Phase::TrustNew => "TrustNew",
        }
    }

    fn parse(s: &str) -> Option<Phase> {
        [
            Phase::TrustBoth,
            Phase::SignWithNew,
            Phase::Drain,
            Phase::TrustNew,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }

    fn next(self) -> Option<Phase> {
        match self {
            Phase::TrustBoth => Some(Phase::SignWithNew),
            Phase::SignWithNew => Some(Phase::Drain),
            Phase::Drain => Some(Phase::TrustNew),
            Phase::TrustNew => None,
        }
    }

    /// How long to wait once every member finished the phase.
    fn wait(self, periods: Periods) -> Duration {
        match self {
            Phase::TrustBoth => periods.propagation,
            Phase::Drain => periods.drain,
            Phase::SignWithNew | Phase::TrustNew => Duration::ZERO,
        }
    }
}

/// The waits of a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periods {
    pub propagation: Duration,
    pub drain: Duration,
}

/// A root as the record knows it: its certificate, and the Secret in the
/// operator's namespace that holds its key (`None`: the key is gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootRef {
    pub cert_pem: String,
    pub secret: Option<String>,
}

/// A rotation in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub phase: Phase,
    /// When the phase began.
    pub since: Timestamp,
    /// When every member had first finished the phase.
    pub settled_at: Option<Timestamp>,
    pub from: RootRef,
    pub to: RootRef,
    pub reason: String,
}

/// The intermediate of a member that left, as it was when it left: a copy
/// of its `cacerts` signs certificates every member accepts while the root
/// it chains to is in their bundles and it has not expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepartedIntermediate {
    pub serial: String,
    pub not_after: Timestamp,
    /// The root (PEM) its chain ends at.
    pub root_pem: String,
}

/// What meshfed keeps about a federation's roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaRecord {
    /// The root every member trusts and signs with when no rotation runs.
    pub active: RootRef,
    /// The last `spec.ca.rootRotation.request` acted on.
    pub request: Option<String>,
    /// How many roots meshfed generated for this federation (names them).
    pub generated: u32,
    pub rotation: Option<Rotation>,
    /// Intermediates of members that left, by member, while still trusted.
    pub departed: BTreeMap<String, DepartedIntermediate>,
}

/// What every member must hold now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target<'a> {
    /// The root whose key signs intermediates.
    pub signing: &'a RootRef,
    /// The roots of `root-cert.pem`, in order.
    pub bundle: Vec<&'a str>,
}

impl Target<'_> {
    /// `root-cert.pem`: the roots, concatenated.
    pub fn bundle_pem(&self) -> String {
        self.bundle
            .iter()
            .map(|pem| {
                let pem = pem.trim_end();
                format!("{pem}\n")
            })
            .collect()
    }

    /// Identifies the target: a member reports the id it reached.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.signing.cert_pem.as_bytes());
        for root in &self.bundle {
            h.update([0]);
            h.update(root.as_bytes());
        }
        h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// What the members said about the current target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Every member reported it reached the target.
    Reached,
    /// A member answered and has not reached it (it fell behind or joined).
    Behind,
    /// A member has not been heard from (the operator just started, or the
    /// member cannot be reached): nothing about the phase changes, neither
    /// its end nor its wait.
    Unknown,
}

impl Progress {
    /// Every member's progress together: one behind holds the phase, one
    /// unknown holds everything.
    pub fn of(members: impl IntoIterator<Item = Progress>) -> Progress {
        members
            .into_iter()
            .fold(Progress::Reached, |all, m| match (all, m) {
                (Progress::Behind, _) | (_, Progress::Behind) => Progress::Behind,
                (Progress::Unknown, _) | (_, Progress::Unknown) => Progress::Unknown,
                _ => Progress::Reached,
            })
    }
}

/// What [`CaRecord::advance`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every member finished the phase; its wait runs until then.
    Settled(Timestamp),
    /// A member fell behind (or joined) after the phase had settled.
    Unsettled,
    /// A new phase began.
    Entered(Phase),
    /// The rotation is over: the new root is the only one.
    Finished,
}

impl CaRecord {
    /// A record for a federation that has just got its first root.
    pub fn new(active: RootRef, request: Option<String>) -> Self {
        CaRecord {
            active,
            request,
            generated: 0,
            rotation: None,
            departed: BTreeMap::new(),
        }
    }

    /// Keeps what members that just left still hold (an intermediate
    /// already noted stays as noted), and forgets every departed
    /// intermediate no longer trusted: expired, or its root gone from the
    /// target's bundle (a rotation, e.g. under `onRemoval: Revoke`, ended).
    pub fn note_departed(
        &mut self,
        leaving: impl IntoIterator<Item = (String, DepartedIntermediate)>,
        now: Timestamp,
    ) {
        for (member, intermediate) in leaving {
            self.departed.entry(member).or_insert(intermediate);
        }
        let bundle: Vec<String> = self.target().bundle.iter().map(|p| p.to_string()).collect();
        self.departed.retain(|_, d| {
            d.not_after > now && bundle.iter().any(|root| same_root(root, &d.root_pem))
        });
    }

    /// What members must hold now.
    pub fn target(&self) -> Target<'_> {
        let Some(r) = &self.rotation else {
            return Target {
                signing: &self.active,
                bundle: vec![&self.active.cert_pem],
            };
        };
        let both = vec![r.from.cert_pem.as_str(), r.to.cert_pem.as_str()];
        match r.phase {
            Phase::TrustBoth => Target {
                signing: &r.from,
                bundle: both,
            },
            Phase::SignWithNew | Phase::Drain => Target {
                signing: &r.to,
                bundle: both,
            },
            Phase::TrustNew => Target {
                signing: &r.to,
                bundle: vec![&r.to.cert_pem],
            },
        }
    }

    /// Starts a rotation to `to`, unless one runs (nothing moves backwards
    /// or jumps: a newer root waits for the running rotation to finish) or
    /// `to` is the active root. True when it started.
    pub fn start(&mut self, to: RootRef, reason: &str, now: Timestamp) -> bool {
        if self.rotation.is_some() || same_root(&to.cert_pem, &self.active.cert_pem) {
            return false;
        }
        self.rotation = Some(Rotation {
            phase: Phase::TrustBoth,
            since: now,
            settled_at: None,
            from: self.active.clone(),
            to,
            reason: reason.into(),
        });
        true
    }

    /// Moves the rotation on, given where the members stand on the current
    /// target. `None`: nothing changed.
    pub fn advance(
        &mut self,
        progress: Progress,
        periods: Periods,
        now: Timestamp,
    ) -> Option<Step> {
        let rotation = self.rotation.as_mut()?;
        match progress {
            // A member fell behind (or joined): its wait starts again.
            Progress::Behind => return rotation.settled_at.take().map(|_| Step::Unsettled),
            // Not knowing is not falling behind: a restart changes nothing.
            Progress::Unknown => return None,
            Progress::Reached => {}
        }
        let settled = *rotation.settled_at.get_or_insert(now);
        let ends = settled + signed(rotation.phase.wait(periods));
        if now < ends {
            return (settled == now).then_some(Step::Settled(ends));
        }
        match rotation.phase.next() {
            Some(next) => {
                rotation.phase = next;
                rotation.since = now;
                rotation.settled_at = None;
                Some(Step::Entered(next))
            }
            None => {
                let to = rotation.to.clone();
                self.rotation = None;
                self.active = to;
                Some(Step::Finished)
            }
        }
    }

    /// When the current wait ends, if every member finished the phase.
    pub fn next_phase_at(&self, periods: Periods) -> Option<Timestamp> {
        let r = self.rotation.as_ref()?;
        Some(r.settled_at? + signed(r.phase.wait(periods)))
    }

    /// The record as ConfigMap data.
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut data = BTreeMap::from([
            ("active".to_string(), self.active.cert_pem.clone()),
            ("generated".to_string(), self.generated.to_string()),
        ]);
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                data.insert(k.into(), v);
            }
        };
        put("active-secret", self.active.secret.clone());
        for (member, d) in &self.departed {
            let value = serde_json::json!({
                "serial": d.serial,
                "notAfter": d.not_after.to_string(),
                "root": d.root_pem,
            });
            put(&format!("{DEPARTED}{member}"), Some(value.to_string()));
        }
        put("request", self.request.clone());
        if let Some(r) = &self.rotation {
            put("phase", Some(r.phase.name().into()));
            put("since", Some(r.since.to_string()));
            put("settled-at", r.settled_at.map(|t| t.to_string()));
            put("from", Some(r.from.cert_pem.clone()));
            put("from-secret", r.from.secret.clone());
            put("to", Some(r.to.cert_pem.clone()));
            put("to-secret", r.to.secret.clone());
            put("reason", Some(r.reason.clone()));
        }
        data
    }

    /// The record from ConfigMap data; `None` if it is not one.
    pub fn from_data(data: &BTreeMap<String, String>) -> Option<Self> {
        let get = |k: &str| data.get(k).cloned();
        let rotation = match get("phase") {
            None => None,
            Some(phase) => Some(Rotation {
                phase: Phase::parse(&phase)?,
                since: get("since")?.parse().ok()?,
                settled_at: get("settled-at").and_then(|t| t.parse().ok()),
                from: RootRef {
                    cert_pem: get("from")?,
                    secret: get("from-secret"),
                },
                to: RootRef {
                    cert_pem: get("to")?,
                    secret: get("to-secret"),
                },
                reason: get("reason").unwrap_or_default(),
            }),
        };
        Some(CaRecord {
            active: RootRef {
                cert_pem: get("active")?,
                secret: get("active-secret"),
            },
            request: get("request"),
            generated: get("generated").and_then(|g| g.parse().ok()).unwrap_or(0),
            rotation,
            departed: data
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(DEPARTED)?, v)))
                .filter_map(|(member, v)| {
                    let v: serde_json::Value = serde_json::from_str(v).ok()?;
                    let d = DepartedIntermediate {
                        serial: v["serial"].as_str()?.to_string(),
                        not_after: v["notAfter"].as_str()?.parse().ok()?,
                        root_pem: v["root"].as_str()?.to_string(),
                    };
                    Some((member.to_string(), d))
                })
                .collect(),
        })
    }
}

/// Record key prefix of a departed member's intermediate (member names are
/// DNS labels: no dots).
const DEPARTED: &str = "departed.";

/// Whether two PEM certificates are the same root (whitespace aside).
pub fn same_root(a: &str, b: &str) -> bool {
    a.trim() == b.trim()
}

fn signed(d: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> RootRef {
        RootRef {
            cert_pem: format!("-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n"),
            secret: Some(format!("{name}-secret")),
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    const PERIODS: Periods = Periods {
        propagation: Duration::from_secs(60),
        drain: Duration::from_secs(600),
    };

    #[test]
    fn every_bundle_change_is_a_superset_or_a_subset_of_the_last() {
        let mut record = CaRecord::new(root("old"), None);
        let bundles = |r: &CaRecord| -> Vec<String> {
            r.target().bundle.iter().map(|s| s.to_string()).collect()
        };
        let mut seen = vec![bundles(&record)];
        let mut signers = vec![record.target().signing.clone()];
        assert!(record.start(root("new"), "rootSecretRef changed", t(0)));
        let mut now = 0;
        while record.rotation.is_some() {
            seen.push(bundles(&record));
            signers.push(record.target().signing.clone());
            now += 1000;
            record.advance(Progress::Reached, PERIODS, t(now));
            record.advance(Progress::Reached, PERIODS, t(now + 1000));
            now += 1000;
        }
        seen.push(bundles(&record));
        for pair in seen.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.iter().all(|x| b.contains(x)) || b.iter().all(|x| a.contains(x)),
                "{a:?} -> {b:?}"
            );
        }
        assert_eq!(seen.first().unwrap(), &[root("old").cert_pem]);
        assert_eq!(seen.last().unwrap(), &[root("new").cert_pem]);
        assert_eq!(record.active, root("new"));
        // Signing moves to the new root only once both are trusted.
        assert_eq!(signers[1], root("old"), "TrustBoth signs with the old root");
        assert_eq!(signers.last().unwrap(), &root("new"));
    }

    #[test]
    fn phases_wait_for_every_member_and_for_their_periods() {
        let mut record = CaRecord::new(root("old"), None);
        record.start(root("new"), "test", t(0));
        assert_eq!(
            record.advance(Progress::Behind, PERIODS, t(10)),
            None,
            "a member holds it"
        );
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(20)),
            Some(Step::Settled(t(80)))
        );
        assert_eq!(record.next_phase_at(PERIODS), Some(t(80)));
        assert_eq!(record.advance(Progress::Reached, PERIODS, t(79)), None);
        // A member falls behind: the propagation wait starts again.
        assert_eq!(
            record.advance(Progress::Behind, PERIODS, t(79)),
            Some(Step::Unsettled)
        );
        assert_eq!(record.rotation.as_ref().unwrap().settled_at, None);
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(100)),
            Some(Step::Settled(t(160)))
        );
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(160)),
            Some(Step::Entered(Phase::SignWithNew))
        );
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(170)),
            Some(Step::Entered(Phase::Drain)),
            "no wait after signing"
        );
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(171)),
            Some(Step::Settled(t(771)))
        );
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(770)),
            None,
            "draining"
        );
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(771)),
            Some(Step::Entered(Phase::TrustNew))
        );
        assert_eq!(record.advance(Progress::Behind, PERIODS, t(800)), None);
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(801)),
            Some(Step::Finished)
        );
        assert_eq!(record.rotation, None);
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(900)),
            None,
            "nothing runs"
        );
    }

    #[test]
    fn a_member_not_heard_from_neither_ends_nor_restarts_a_wait() {
        let mut record = CaRecord::new(root("old"), None);
        record.start(root("new"), "test", t(0));
        assert_eq!(record.advance(Progress::Unknown, PERIODS, t(10)), None);
        assert_eq!(
            record.rotation.as_ref().unwrap().settled_at,
            None,
            "not settled by it"
        );
        record.advance(Progress::Reached, PERIODS, t(20));
        // The operator restarts while the phase waits: its members are unknown.
        assert_eq!(record.advance(Progress::Unknown, PERIODS, t(30)), None);
        assert_eq!(
            record.next_phase_at(PERIODS),
            Some(t(80)),
            "the wait goes on"
        );
        assert_eq!(
            record.advance(Progress::Unknown, PERIODS, t(90)),
            None,
            "nor does it end the phase"
        );
        assert_eq!(
            record.advance(Progress::Reached, PERIODS, t(91)),
            Some(Step::Entered(Phase::SignWithNew))
        );
    }

    #[test]
    fn progress_of_the_fleet_is_held_by_its_slowest_member() {
        use Progress::*;
        assert_eq!(Progress::of([]), Reached);
        assert_eq!(Progress::of([Reached, Reached]), Reached);
        assert_eq!(Progress::of([Reached, Unknown]), Unknown);
        assert_eq!(Progress::of([Unknown, Behind, Reached]), Behind);
        assert_eq!(Progress::of([Behind, Unknown]), Behind);
    }

    #[test]
    fn a_rotation_is_never_replaced_or_started_for_the_same_root() {
        let mut record = CaRecord::new(root("old"), None);
        assert!(!record.start(root("old"), "same", t(0)));
        assert!(record.start(root("new"), "first", t(0)));
        assert!(
            !record.start(root("newer"), "second", t(1)),
            "waits for the first"
        );
        assert_eq!(record.rotation.as_ref().unwrap().to, root("new"));
    }

    fn departed(serial: &str, root: &RootRef, not_after: i64) -> DepartedIntermediate {
        DepartedIntermediate {
            serial: serial.into(),
            not_after: t(not_after),
            root_pem: root.cert_pem.clone(),
        }
    }

    #[test]
    fn a_departed_intermediate_is_kept_while_it_is_trusted() {
        let mut record = CaRecord::new(root("old"), None);
        record.note_departed(
            [("c".to_string(), departed("1c", &root("old"), 5000))],
            t(0),
        );
        // Noted once: a later report does not replace what it held.
        record.note_departed(
            [("c".to_string(), departed("2c", &root("old"), 9000))],
            t(1),
        );
        assert_eq!(record.departed["c"].serial, "1c");
        // Trusted through a rotation while the old root is in the bundle.
        record.start(root("new"), "revoke", t(2));
        let mut now = 2;
        loop {
            now += 1000;
            record.advance(Progress::Reached, PERIODS, t(now));
            if record
                .rotation
                .as_ref()
                .is_none_or(|r| r.phase == Phase::TrustNew)
            {
                break;
            }
            record.note_departed([], t(3));
            assert!(record.departed.contains_key("c"), "{:?}", record.rotation);
        }
        // TrustNew: its root left every bundle.
        record.note_departed([], t(3));
        assert!(record.departed.is_empty());
        // And one that simply expires.
        record.note_departed(
            [("d".to_string(), departed("1d", &root("new"), 100))],
            t(50),
        );
        assert!(record.departed.contains_key("d"));
        record.note_departed([], t(100));
        assert!(record.departed.is_empty());
    }

    #[test]
    fn the_record_survives_a_restart_in_every_phase() {
        let mut record = CaRecord::new(root("old"), Some("r1".into()));
        record.generated = 2;
        record.note_departed(
            [("c".to_string(), departed("1c", &root("old"), 5000))],
            t(0),
        );
        assert_eq!(record.departed.len(), 1);
        assert_eq!(CaRecord::from_data(&record.to_data()), Some(record.clone()));
        record.start(
            RootRef {
                secret: None,
                ..root("new")
            },
            "lost",
            t(0),
        );
        for now in [10, 100, 200, 300, 400, 1200] {
            assert_eq!(
                CaRecord::from_data(&record.to_data()),
                Some(record.clone()),
                "{:?}",
                record.rotation.as_ref().map(|r| r.phase)
            );
            record.advance(Progress::Reached, PERIODS, t(now));
        }
        assert_eq!(CaRecord::from_data(&BTreeMap::new()), None);
    }

    #[test]
    fn targets_are_told_apart_by_signer_and_bundle() {
        let mut record = CaRecord::new(root("old"), None);
        let idle = record.target().id();
        record.start(root("new"), "test", t(0));
        let both = record.target().id();
        assert_ne!(idle, both);
        assert_eq!(
            record.target().bundle_pem(),
            format!("{}{}", root("old").cert_pem, root("new").cert_pem)
        );
        record.advance(Progress::Reached, PERIODS, t(1));
        record.advance(Progress::Reached, PERIODS, t(100));
        let signing = record.target().id();
        assert_ne!(both, signing, "same bundle, new signer");
    }
}
