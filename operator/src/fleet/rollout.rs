//! Fleet-wide Istio upgrades by revision, decided from what members report:
//! which revisions each member runs, where its tags point, and which members
//! may change now (waves). Pure: the workers make it so.
//!
//! A member changes in three steps, each seen in what its worker reports:
//! the new revision is installed beside the old one; once its istiod is
//! ready the tags move to it (one write per tag object: the objects are
//! handed from one revision's render to the other's); once nothing uses the
//! old revision, it is removed. A wave is the next `maxConcurrent` members
//! (in upgrade order) that are not at the target; the next wave starts when
//! every member of this one has its tags on a ready target, plus `pause`.
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use kube::{Client, ResourceExt};

use crate::api::{
    ControlPlaneMode, HaltStatus, MeshFederation, RevisionStatus, RolloutStatus, UpgradeStrategy,
};
use crate::events::{Event, Reason};

/// The revision of a revision-less install (Istio calls it `default`).
pub const REVISIONLESS: &str = "";

/// The revision a version is installed as: `1.31` -> `1-31`.
pub fn revision_of(version: &str) -> String {
    version
        .chars()
        .map(|c| match c {
            '.' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A revision's name for people: `default` for a revision-less install.
pub fn display(revision: &str) -> &str {
    if revision == REVISIONLESS {
        "default"
    } else {
        revision
    }
}

/// Compares Istio versions by their numeric parts (`1.9` < `1.30`), then as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '_'])
            .map_while(|p| p.parse().ok())
            .collect()
    };
    parts(a).cmp(&parts(b)).then_with(|| a.cmp(b))
}

/// One revision a worker found in its member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revision {
    /// Istio version (unknown for a revision-less install meshfed did not label).
    pub version: Option<String>,
    /// Its istiod Deployment is available.
    pub ready: bool,
    /// Why it is not, in words.
    pub problem: Option<String>,
    /// Pods it injected.
    pub pods: usize,
    /// Namespaces labelled `istio.io/rev=<revision>`.
    pub namespaces: Vec<String>,
}

/// A member's control plane as its worker last found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub revisions: BTreeMap<String, Revision>,
    /// The revision the `default` tag points to.
    pub tags_at: Option<String>,
    /// Version of the base chart (Istio's CRDs) in the member.
    pub base_version: Option<String>,
}

impl Installed {
    /// Whether the member is at `revision`: its tags point there. Whether
    /// that istiod is ready is its health (`ControlPlanesReady`), not a
    /// rollout step: a member whose tag holder is briefly not ready (or
    /// not ready yet after a fresh install) is not rolled out again, which
    /// would render the holder a second time without its tags and delete
    /// the injection webhooks while pods are admitted.
    fn at(&self, revision: &str) -> bool {
        self.tags_at.as_deref() == Some(revision) && self.revisions.contains_key(revision)
    }
}

/// One revision a worker renders and applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Render {
    pub revision: String,
    pub version: String,
    /// Whether this render carries the revision tags.
    pub tags: bool,
}

/// Where a member is in a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradePhase {
    /// At the target (or nothing to do).
    Current,
    /// Not in the current wave yet.
    Waiting,
    /// The new revision is installed beside the old; waiting for it to be ready.
    Installing,
    /// The tags move to the new revision.
    Switching,
    /// Its gate was not met within gateTimeout.
    Halted,
    /// At the target; an old revision is still in use.
    RemovingOld,
    /// Not known yet (its worker has not reported): nothing is changed.
    Unknown,
}

impl UpgradePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradePhase::Current => "Current",
            UpgradePhase::Waiting => "Waiting",
            UpgradePhase::Installing => "Installing",
            UpgradePhase::Switching => "Switching",
            UpgradePhase::Halted => "Halted",
            UpgradePhase::RemovingOld => "RemovingOld",
            UpgradePhase::Unknown => "Unknown",
        }
    }
}

/// What a member's worker makes of its control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlanePlan {
    /// Revisions rendered and applied, in order: the one holding the tags
    /// first, so that tag objects change hands before the old holder is
    /// rendered without them.
    pub apply: Vec<Render>,
    /// Revisions whose objects are deleted.
    pub remove: Vec<String>,
    /// Version of the base chart (CRDs): the newest in the fleet, never
    /// older than what the member has. `None`: leave base alone.
    pub base_version: Option<String>,
    /// The revision the `default` tag and the gateways follow, with its
    /// version; `None` while it is not known.
    pub active: Option<Render>,
    pub phase: UpgradePhase,
    /// For a member not known yet: the install it gets if its worker finds
    /// no istiod there (a new member is installed at once, without waiting
    /// for a round of reports).
    pub if_new: Option<(Render, String)>,
}

impl ControlPlanePlan {
    /// A plan that changes nothing (the member is not known yet).
    pub fn observe_only() -> ControlPlanePlan {
        ControlPlanePlan {
            apply: Vec::new(),
            remove: Vec::new(),
            base_version: None,
            active: None,
            phase: UpgradePhase::Unknown,
            if_new: None,
        }
    }

    /// The plan for what the worker found: `if_new` applies to a member
    /// without istiod, anything else is left for the next decision.
    pub fn resolve(&self, installed: &Installed) -> ControlPlanePlan {
        match &self.if_new {
            Some((render, base)) if installed.revisions.is_empty() => ControlPlanePlan {
                apply: vec![render.clone()],
                remove: Vec::new(),
                base_version: Some(base.clone()),
                active: Some(render.clone()),
                phase: UpgradePhase::Current,
                if_new: None,
            },
            _ => self.clone(),
        }
    }
}

/// The fleet's settings for a rollout.
#[derive(Clone, Debug)]
pub struct Policy<'a> {
    pub version: &'a str,
    pub strategy: UpgradeStrategy,
    /// Member names in upgrade order.
    pub order: Vec<&'a str>,
    pub max_concurrent: usize,
    pub pause: Duration,
    pub gate_timeout: Duration,
    pub keep_old: bool,
}

/// A rollout decision: every member's plan, the fleet's status, events.
#[derive(Clone, Debug)]
pub struct Rollout {
    pub plans: BTreeMap<String, ControlPlanePlan>,
    pub status: RolloutStatus,
    pub events: Vec<Event>,
    /// When the decision changes by itself (a pause or a gate timeout ends).
    pub next_check: Option<Timestamp>,
}

fn time(t: Timestamp) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX)
}

/// Decides every member's plan. `observed` holds what each member's worker
/// last found (`None`: not reached yet); `previous` is where the rollout
/// stood, as last recorded (`meshfed-rollout-<federation>`).
pub fn plan(
    settings: &Policy,
    observed: &BTreeMap<String, Option<Installed>>,
    previous: Option<&RolloutStatus>,
    now: Timestamp,
) -> Rollout {
    let target = settings.version;
    // The base chart follows the newest version anywhere in the fleet.
    let newest = observed
        .values()
        .flatten()
        .flat_map(|i| i.revisions.values().filter_map(|r| r.version.as_deref()))
        .chain([target])
        .max_by(|a, b| compare_versions(a, b))
        .unwrap_or(target)
        .to_string();
    let base_for = |installed: &Installed| -> String {
        match &installed.base_version {
            Some(b) if compare_versions(b, &newest) == Ordering::Greater => b.clone(),
            _ => newest.clone(),
        }
    };
    if settings.strategy == UpgradeStrategy::InPlace {
        return in_place(settings, observed, &base_for);
    }
    let revision = revision_of(target);
    let mut events = Vec::new();
    let mut wave = Wave::choose(settings, observed, previous, &revision, now, &mut events);
    let fresh = Render {
        revision: revision.clone(),
        version: target.to_string(),
        tags: true,
    };
    let mut plans = BTreeMap::new();
    let mut halted = None;
    let mut updated = 0;
    for name in &settings.order {
        let in_wave = wave.members.contains(name);
        let mut plan = match observed.get(*name) {
            Some(Some(installed)) => {
                let base_version = Some(base_for(installed));
                if installed.revisions.is_empty() || installed.at(&revision) {
                    if installed.at(&revision) {
                        updated += 1;
                    }
                    at_target(settings, installed, &fresh, base_version)
                } else if in_wave {
                    changing(installed, &fresh, base_version)
                } else {
                    waiting(installed, base_version)
                }
            }
            _ => unreached(&fresh, &newest, in_wave),
        };
        // A member of the wave that does not get there within the gate
        // timeout halts the rollout.
        if in_wave && plan.phase == UpgradePhase::Installing {
            let cause = || match observed.get(*name) {
                Some(Some(installed)) => (
                    "IstiodReady",
                    installed
                        .revisions
                        .get(&revision)
                        .and_then(|r| r.problem.clone())
                        .unwrap_or_else(|| format!("istiod-{revision} is not installed yet")),
                ),
                _ => (
                    "MemberReachable",
                    "its API server has not been reached".into(),
                ),
            };
            if let Some(h) = gate_failure(settings, wave.started_at, now, cause) {
                plan.phase = UpgradePhase::Halted;
                halted.get_or_insert(HaltStatus {
                    member: name.to_string(),
                    ..h
                });
            } else if let (Some(at), Some(Some(_))) = (wave.started_at, observed.get(*name)) {
                let deadline = add(at, settings.gate_timeout);
                wave.next_check = wave.next_check.min(Some(deadline)).or(Some(deadline));
            }
        }
        plans.insert(name.to_string(), plan);
    }

    let status = status_of(
        settings,
        previous,
        &revision,
        &wave,
        halted,
        updated,
        &mut events,
    );
    Rollout {
        plans,
        status,
        events,
        next_check: wave.next_check,
    }
}

/// Where the rollout stands, and the Events for a new halt or its end.
fn status_of(
    settings: &Policy,
    previous: Option<&RolloutStatus>,
    revision: &str,
    wave: &Wave,
    halted: Option<HaltStatus>,
    updated: i32,
    events: &mut Vec<Event>,
) -> RolloutStatus {
    let target = settings.version;
    let phase = if halted.is_some() {
        "Halted"
    } else if !wave.members.is_empty() {
        "RollingOut"
    } else if wave.next_check.is_some() {
        "Paused"
    } else if updated as usize == settings.order.len() {
        "Complete"
    } else {
        "RollingOut"
    };
    let was_halted = previous.and_then(|p| p.halted.as_ref());
    if let Some(h) = &halted
        && was_halted.is_none_or(|w| w.member != h.member || w.gate != h.gate)
    {
        events.push(Event::new(
            Reason::UpgradeHalted,
            format!(
                "member {}: gate {} not met within {:?}: {}",
                h.member, h.gate, settings.gate_timeout, h.message
            ),
        ));
    }
    let was_complete = previous.is_some_and(|p| p.version == target && p.phase == "Complete");
    if phase == "Complete" && !was_complete && previous.is_some() {
        events.push(Event::new(
            Reason::UpgradeComplete,
            format!("every member runs Istio {target} (revision {revision})"),
        ));
    }
    RolloutStatus {
        version: target.to_string(),
        revision: revision.to_string(),
        phase: phase.into(),
        updated,
        wave: wave.members.iter().map(|m| m.to_string()).collect(),
        wave_started_at: wave.started_at.map(time),
        last_wave_finished_at: wave.last_finished.map(time),
        halted,
    }
}

/// The members changing now, and the rollout's clock.
struct Wave<'a> {
    members: Vec<&'a str>,
    started_at: Option<Timestamp>,
    /// When the last wave finished (the pause's start).
    last_finished: Option<Timestamp>,
    /// When the decision changes by itself (a pause or a gate timeout ends).
    next_check: Option<Timestamp>,
}

impl<'a> Wave<'a> {
    /// Members already changing (or named in the last status), else the
    /// next ones in order once the pause after the last wave is over.
    fn choose(
        settings: &'a Policy,
        observed: &BTreeMap<String, Option<Installed>>,
        previous: Option<&RolloutStatus>,
        revision: &str,
        now: Timestamp,
        events: &mut Vec<Event>,
    ) -> Self {
        let previous_wave: BTreeSet<&str> = previous
            .filter(|p| p.revision == revision)
            .map(|p| p.wave.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let needs_change = |m: &str| match observed.get(m) {
            Some(Some(i)) => !i.revisions.is_empty() && !i.at(revision),
            // Not reached yet: part of a wave only if it already was.
            _ => previous_wave.contains(m),
        };
        let started = |m: &str| match observed.get(m) {
            Some(Some(i)) => i.revisions.contains_key(revision) && !i.at(revision),
            _ => false,
        };
        let mut wave = Wave {
            members: settings
                .order
                .iter()
                .copied()
                .filter(|m| needs_change(m) && (started(m) || previous_wave.contains(m)))
                .collect(),
            started_at: previous
                .filter(|p| p.revision == revision && !p.wave.is_empty())
                .and_then(|p| p.wave_started_at.as_ref().map(|t| t.0)),
            last_finished: previous.and_then(|p| p.last_wave_finished_at.as_ref().map(|t| t.0)),
            next_check: None,
        };
        if wave.members.is_empty() {
            if !previous_wave.is_empty() {
                wave.last_finished = Some(now);
                events.push(Event::new(
                    Reason::UpgradeWaveFinished,
                    format!(
                        "revision {revision}: {} at the new revision",
                        previous_wave.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            let pending: Vec<&str> = settings
                .order
                .iter()
                .copied()
                .filter(|m| needs_change(m))
                .collect();
            let resume_at = wave.last_finished.map(|t| add(t, settings.pause));
            match resume_at {
                Some(at) if at > now && !pending.is_empty() => wave.next_check = Some(at),
                _ => {
                    wave.members = pending.into_iter().take(settings.max_concurrent).collect();
                    if !wave.members.is_empty() {
                        wave.started_at = Some(now);
                        events.push(Event::new(
                            Reason::UpgradeWaveStarted,
                            format!(
                                "Istio {} (revision {revision}): {}",
                                settings.version,
                                wave.members.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if wave.members.is_empty() {
            wave.started_at = None;
        }
        wave
    }
}

/// A member not reached yet: observed only, and installed at `fresh` at
/// once should it turn out to have no istiod.
fn unreached(fresh: &Render, newest: &str, in_wave: bool) -> ControlPlanePlan {
    let mut plan = ControlPlanePlan::observe_only();
    plan.if_new = Some((fresh.clone(), newest.to_string()));
    if in_wave {
        plan.phase = UpgradePhase::Installing;
    }
    plan
}

/// New to Istio (installed at once), or at the target: old revisions go
/// once nothing uses them.
fn at_target(
    settings: &Policy,
    installed: &Installed,
    fresh: &Render,
    base_version: Option<String>,
) -> ControlPlanePlan {
    let old: Vec<(&String, &Revision)> = installed
        .revisions
        .iter()
        .filter(|(r, _)| **r != fresh.revision)
        .collect();
    let unused: Vec<String> = old
        .iter()
        .filter(|(_, r)| r.pods == 0 && r.namespaces.is_empty())
        .map(|(name, _)| (*name).clone())
        .collect();
    let phase = if settings.keep_old || old.is_empty() || unused.len() == old.len() {
        UpgradePhase::Current
    } else {
        UpgradePhase::RemovingOld
    };
    ControlPlanePlan {
        apply: vec![fresh.clone()],
        remove: if settings.keep_old {
            Vec::new()
        } else {
            unused
        },
        base_version,
        active: Some(fresh.clone()),
        phase,
        if_new: None,
    }
}

/// The revision that holds the tags now, as a render.
fn tag_holder(installed: &Installed) -> Option<Render> {
    installed.tags_at.as_ref().and_then(|t| {
        Some(Render {
            revision: t.clone(),
            version: installed.revisions.get(t)?.version.clone()?,
            tags: true,
        })
    })
}

/// In the wave: the new revision is installed beside the tag holder; once
/// it is ready the tags move (the new revision's render takes them over,
/// then the old holder is rendered without them).
fn changing(
    installed: &Installed,
    fresh: &Render,
    base_version: Option<String>,
) -> ControlPlanePlan {
    let holder = tag_holder(installed);
    let ready = installed
        .revisions
        .get(&fresh.revision)
        .is_some_and(|r| r.ready);
    if ready {
        let mut apply = vec![fresh.clone()];
        apply.extend(holder.map(|h| Render { tags: false, ..h }));
        return ControlPlanePlan {
            apply,
            remove: Vec::new(),
            base_version,
            active: Some(fresh.clone()),
            phase: UpgradePhase::Switching,
            if_new: None,
        };
    }
    let untagged = Render {
        tags: false,
        ..fresh.clone()
    };
    ControlPlanePlan {
        apply: holder.clone().into_iter().chain([untagged]).collect(),
        remove: Vec::new(),
        base_version,
        active: holder,
        phase: UpgradePhase::Installing,
        if_new: None,
    }
}

/// Waits for its wave with what it has (the holder re-applied, so drift is
/// still repaired; a revision-less holder of unknown version is left
/// alone).
fn waiting(installed: &Installed, base_version: Option<String>) -> ControlPlanePlan {
    let holder = tag_holder(installed);
    ControlPlanePlan {
        apply: holder.clone().into_iter().collect(),
        remove: Vec::new(),
        base_version,
        active: holder,
        phase: UpgradePhase::Waiting,
        if_new: None,
    }
}

/// A gate unmet since the wave began, once `gate_timeout` has passed.
fn gate_failure(
    settings: &Policy,
    wave_started_at: Option<Timestamp>,
    now: Timestamp,
    cause: impl FnOnce() -> (&'static str, String),
) -> Option<HaltStatus> {
    let since = wave_started_at?;
    if add(since, settings.gate_timeout) > now {
        return None;
    }
    let (gate, message) = cause();
    Some(HaltStatus {
        member: String::new(),
        gate: gate.into(),
        message,
    })
}

/// InPlace: one revision-less istiod per member at the target, everywhere
/// at once; other revisions are left alone.
fn in_place(
    settings: &Policy,
    observed: &BTreeMap<String, Option<Installed>>,
    base_for: &dyn Fn(&Installed) -> String,
) -> Rollout {
    let render = Render {
        revision: REVISIONLESS.into(),
        version: settings.version.into(),
        tags: true,
    };
    let mut updated = 0;
    let plans = settings
        .order
        .iter()
        .map(|m| {
            let installed = observed.get(*m).cloned().flatten().unwrap_or_default();
            let current = installed
                .revisions
                .get(REVISIONLESS)
                .is_some_and(|r| r.ready && r.version.as_deref() == Some(settings.version));
            updated += i32::from(current);
            let plan = ControlPlanePlan {
                apply: vec![render.clone()],
                remove: Vec::new(),
                base_version: Some(base_for(&installed)),
                active: Some(render.clone()),
                phase: UpgradePhase::Current,
                if_new: None,
            };
            (m.to_string(), plan)
        })
        .collect();
    let complete = updated as usize == settings.order.len();
    Rollout {
        plans,
        status: RolloutStatus {
            version: settings.version.into(),
            phase: if complete { "Complete" } else { "RollingOut" }.into(),
            updated,
            ..Default::default()
        },
        events: Vec::new(),
        next_check: None,
    }
}

/// `status.members[].revisions` from what the worker found.
pub fn revision_status(installed: &Installed) -> Vec<RevisionStatus> {
    installed
        .revisions
        .iter()
        .map(|(name, r)| RevisionStatus {
            name: display(name).into(),
            version: r.version.clone(),
            ready: r.ready,
            pods: r.pods as i32,
            namespaces: r.namespaces.clone(),
        })
        .collect()
}

/// `meshfed-rollout-<federation>` in the operator's namespace: where the
/// control-plane rollout stands (its wave, when the wave began, when the
/// last one finished, where it halted).
fn record_name(federation: &str) -> String {
    format!("meshfed-rollout-{federation}")
}

/// The rollout on record; before there was a record (a federation from
/// before meshfed kept one), the rollout as its status last said.
pub async fn load(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
) -> Result<Option<RolloutStatus>, kube::Error> {
    let record = super::record::read(client, namespace, &record_name(&fed.name_any())).await?;
    let recorded = record
        .and_then(|data| data.get("rollout").cloned())
        .and_then(|json| serde_json::from_str(&json).ok());
    Ok(recorded.or_else(|| fed.status.as_ref()?.control_plane.clone()))
}

/// The control-plane rollout (Managed with a version): every member's plan
/// from what its worker last found installed and where the rollout stood.
pub fn decide(
    fed: &MeshFederation,
    installed: impl Fn(&str) -> Option<Installed>,
    previous: Option<&RolloutStatus>,
    now: Timestamp,
) -> Option<Rollout> {
    let cp = fed.spec.control_plane.as_ref()?;
    if cp.mode != ControlPlaneMode::Managed {
        return None;
    }
    let upgrade = fed.spec.upgrade();
    let settings = Policy {
        version: cp.version.as_deref()?,
        strategy: upgrade.strategy(),
        order: fed.spec.upgrade_order(),
        max_concurrent: upgrade.max_concurrent(),
        pause: upgrade.pause(),
        gate_timeout: upgrade.gate_timeout(),
        keep_old: upgrade.keeps_old_revisions(),
    };
    let observed = fed
        .spec
        .members
        .iter()
        .map(|m| (m.name.clone(), installed(&m.name)))
        .collect();
    Some(plan(&settings, &observed, previous, now))
}

/// Writes where the rollout stands unless it is what was `recorded`.
pub async fn store(
    client: &Client,
    namespace: &str,
    fed: &MeshFederation,
    recorded: Option<&RolloutStatus>,
    status: &RolloutStatus,
) -> Result<(), kube::Error> {
    if recorded == Some(status) {
        return Ok(());
    }
    let data = BTreeMap::from([(
        "rollout".to_string(),
        serde_json::to_string(status).unwrap_or_default(),
    )]);
    super::record::write(client, namespace, fed, &record_name(&fed.name_any()), data).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn at(version: &str, ready: bool) -> Installed {
        let rev = revision_of(version);
        Installed {
            revisions: [(
                rev.clone(),
                Revision {
                    version: Some(version.into()),
                    ready,
                    ..Default::default()
                },
            )]
            .into(),
            tags_at: Some(rev),
            base_version: Some(version.into()),
        }
    }

    fn with(mut i: Installed, version: &str, ready: bool) -> Installed {
        i.revisions.insert(
            revision_of(version),
            Revision {
                version: Some(version.into()),
                ready,
                problem: (!ready).then(|| "not available".into()),
                ..Default::default()
            },
        );
        i
    }

    fn settings(version: &str, n: usize) -> Policy<'_> {
        Policy {
            version,
            strategy: UpgradeStrategy::RevisionBased,
            order: vec!["a", "b", "c"],
            max_concurrent: n,
            pause: Duration::from_secs(60),
            gate_timeout: Duration::from_secs(300),
            keep_old: false,
        }
    }

    fn fleet(members: &[(&str, Installed)]) -> BTreeMap<String, Option<Installed>> {
        members
            .iter()
            .map(|(m, i)| (m.to_string(), Some(i.clone())))
            .collect()
    }

    #[test]
    fn revisions_are_dns_labels_and_versions_compare_by_number() {
        assert_eq!(revision_of("1.31"), "1-31");
        assert_eq!(revision_of("1.31.0_RC1"), "1-31-0-rc1");
        assert_eq!(compare_versions("1.9", "1.30"), Ordering::Less);
        assert_eq!(compare_versions("1.31", "1.30"), Ordering::Greater);
        assert_eq!(compare_versions("1.31", "1.31"), Ordering::Equal);
        assert_eq!(display(REVISIONLESS), "default");
    }

    #[test]
    fn new_members_install_the_target_at_once_with_tags() {
        let observed = fleet(&[("a", Installed::default()), ("b", Installed::default())]);
        let mut s = settings("1.31", 1);
        s.order = vec!["a", "b"];
        let r = plan(&s, &observed, None, t("2026-01-01T00:00:00Z"));
        for m in ["a", "b"] {
            let p = &r.plans[m];
            assert_eq!(
                p.apply,
                vec![Render {
                    revision: "1-31".into(),
                    version: "1.31".into(),
                    tags: true
                }]
            );
            assert_eq!(p.base_version.as_deref(), Some("1.31"));
        }
        assert!(r.status.wave.is_empty());
        assert_eq!(r.status.phase, "RollingOut", "not ready yet");
    }

    #[test]
    fn a_tag_holder_not_ready_is_left_as_it_is_never_rendered_twice() {
        // Right after a fresh install, and after a finished rollout when
        // istiod goes briefly not ready: the tags stay where they are.
        let now = t("2026-01-01T00:00:00Z");
        let s = settings("1.31", 1);
        let done = RolloutStatus {
            version: "1.31".into(),
            revision: "1-31".into(),
            phase: "Complete".into(),
            updated: 3,
            ..Default::default()
        };
        for previous in [None, Some(&done)] {
            let observed = fleet(&[
                ("a", at("1.31", false)),
                ("b", at("1.31", true)),
                ("c", with(at("1.31", false), "1.30", true)),
            ]);
            let r = plan(&s, &observed, previous, now);
            for (m, p) in &r.plans {
                let revisions: BTreeSet<&str> =
                    p.apply.iter().map(|r| r.revision.as_str()).collect();
                assert_eq!(
                    revisions.len(),
                    p.apply.len(),
                    "{m}: one render per revision"
                );
                assert_eq!(
                    p.apply[0],
                    Render {
                        revision: "1-31".into(),
                        version: "1.31".into(),
                        tags: true
                    },
                    "{m} keeps its tags"
                );
                assert!(
                    matches!(p.phase, UpgradePhase::Current | UpgradePhase::RemovingOld),
                    "{m}: {:?}",
                    p.phase
                );
            }
            assert!(r.status.wave.is_empty(), "not a rollout");
            assert_eq!(r.status.updated, 3);
        }
    }

    #[test]
    fn an_unknown_member_is_left_alone_unless_it_has_no_istiod() {
        let observed: BTreeMap<String, Option<Installed>> = [("a".to_string(), None)].into();
        let mut s = settings("1.31", 1);
        s.order = vec!["a"];
        let r = plan(&s, &observed, None, t("2026-01-01T00:00:00Z"));
        let p = &r.plans["a"];
        assert_eq!(
            (p.apply.len(), p.remove.len(), p.phase),
            (0, 0, UpgradePhase::Unknown)
        );
        assert_eq!(
            p.resolve(&at("1.30", true)),
            *p,
            "an install found: nothing changes"
        );
        let new = p.resolve(&Installed::default());
        assert_eq!(
            new.apply,
            vec![Render {
                revision: "1-31".into(),
                version: "1.31".into(),
                tags: true
            }]
        );
        assert_eq!(new.base_version.as_deref(), Some("1.31"));
        assert_eq!(new.phase, UpgradePhase::Current);
    }

    #[test]
    fn a_rollout_goes_in_waves_in_order_with_tags_moved_when_ready() {
        let now = t("2026-01-01T00:00:00Z");
        let s = settings("1.31", 1);
        let old = at("1.30", true);
        // Wave 1: only a installs 1-31, beside 1-30 which keeps the tags.
        let r = plan(
            &s,
            &fleet(&[("a", old.clone()), ("b", old.clone()), ("c", old.clone())]),
            None,
            now,
        );
        assert_eq!(r.status.wave, vec!["a"]);
        assert_eq!(r.status.phase, "RollingOut");
        let a = &r.plans["a"];
        assert_eq!(a.phase, UpgradePhase::Installing);
        assert_eq!(
            a.apply,
            vec![
                Render {
                    revision: "1-30".into(),
                    version: "1.30".into(),
                    tags: true
                },
                Render {
                    revision: "1-31".into(),
                    version: "1.31".into(),
                    tags: false
                },
            ]
        );
        assert_eq!(
            a.base_version.as_deref(),
            Some("1.31"),
            "CRDs follow the newest version"
        );
        for m in ["b", "c"] {
            assert_eq!(r.plans[m].phase, UpgradePhase::Waiting);
            assert_eq!(r.plans[m].apply.len(), 1, "only 1-30");
        }
        assert!(
            r.events
                .iter()
                .any(|e| e.reason == Reason::UpgradeWaveStarted)
        );

        // a's 1-31 is ready: the tags move (new holder first), nobody else starts.
        let a_both = with(old.clone(), "1.31", true);
        let r = plan(
            &s,
            &fleet(&[
                ("a", a_both.clone()),
                ("b", old.clone()),
                ("c", old.clone()),
            ]),
            Some(&r.status),
            now,
        );
        let a = &r.plans["a"];
        assert_eq!(a.phase, UpgradePhase::Switching);
        assert_eq!(
            a.apply,
            vec![
                Render {
                    revision: "1-31".into(),
                    version: "1.31".into(),
                    tags: true
                },
                Render {
                    revision: "1-30".into(),
                    version: "1.30".into(),
                    tags: false
                },
            ]
        );
        assert_eq!(r.status.wave, vec!["a"]);

        // Tags at 1-31: a is done, its old revision goes; the pause holds b.
        let mut a_done = a_both.clone();
        a_done.tags_at = Some("1-31".into());
        let r = plan(
            &s,
            &fleet(&[
                ("a", a_done.clone()),
                ("b", old.clone()),
                ("c", old.clone()),
            ]),
            Some(&r.status),
            now,
        );
        assert_eq!(r.plans["a"].remove, vec!["1-30".to_string()]);
        assert_eq!(r.plans["a"].apply.len(), 1);
        assert_eq!(r.status.phase, "Paused");
        assert!(r.status.wave.is_empty());
        assert_eq!(r.next_check, Some(t("2026-01-01T00:01:00Z")));
        assert_eq!(r.plans["b"].phase, UpgradePhase::Waiting);
        assert!(
            r.events
                .iter()
                .any(|e| e.reason == Reason::UpgradeWaveFinished)
        );
        assert_eq!(r.status.updated, 1);

        // After the pause, b.
        let later = t("2026-01-01T00:01:00Z");
        let r = plan(
            &s,
            &fleet(&[
                ("a", a_done.clone()),
                ("b", old.clone()),
                ("c", old.clone()),
            ]),
            Some(&r.status),
            later,
        );
        assert_eq!(r.status.wave, vec!["b"]);
        assert_eq!(r.plans["b"].phase, UpgradePhase::Installing);
        assert_eq!(r.plans["c"].phase, UpgradePhase::Waiting);
    }

    #[test]
    fn order_and_wave_size_choose_who_goes_first() {
        let now = t("2026-01-01T00:00:00Z");
        let mut s = settings("1.31", 2);
        s.order = vec!["c", "a", "b"];
        let old = at("1.30", true);
        let r = plan(
            &s,
            &fleet(&[("a", old.clone()), ("b", old.clone()), ("c", old.clone())]),
            None,
            now,
        );
        assert_eq!(r.status.wave, vec!["c", "a"]);
        assert_eq!(r.plans["b"].phase, UpgradePhase::Waiting);
    }

    #[test]
    fn an_unmet_gate_halts_the_rollout_and_resumes_once_met() {
        let start = t("2026-01-01T00:00:00Z");
        let s = settings("1.31", 1);
        let old = at("1.30", true);
        let mut a_done = with(old.clone(), "1.31", true);
        a_done.tags_at = Some("1-31".into());
        let b_stuck = with(old.clone(), "1.31", false);
        let previous = RolloutStatus {
            version: "1.31".into(),
            revision: "1-31".into(),
            phase: "RollingOut".into(),
            wave: vec!["b".into()],
            wave_started_at: Some(time(start)),
            ..Default::default()
        };
        let observed = fleet(&[
            ("a", a_done.clone()),
            ("b", b_stuck.clone()),
            ("c", old.clone()),
        ]);
        let r = plan(&s, &observed, Some(&previous), t("2026-01-01T00:04:00Z"));
        assert_eq!(r.status.phase, "RollingOut");
        assert_eq!(r.next_check, Some(t("2026-01-01T00:05:00Z")));
        let r = plan(&s, &observed, Some(&previous), t("2026-01-01T00:05:00Z"));
        assert_eq!(r.status.phase, "Halted");
        let halt = r.status.halted.clone().unwrap();
        assert_eq!(
            (halt.member.as_str(), halt.gate.as_str()),
            ("b", "IstiodReady")
        );
        assert_eq!(halt.message, "not available");
        assert_eq!(r.plans["b"].phase, UpgradePhase::Halted);
        assert_eq!(
            r.plans["c"].phase,
            UpgradePhase::Waiting,
            "members after it are untouched"
        );
        assert_eq!(r.plans["c"].apply.len(), 1);
        assert!(
            r.events
                .iter()
                .any(|e| e.reason == Reason::UpgradeHalted && e.reason.is_warning())
        );
        // Said once.
        let again = plan(&s, &observed, Some(&r.status), t("2026-01-01T00:06:00Z"));
        assert!(
            again
                .events
                .iter()
                .all(|e| e.reason != Reason::UpgradeHalted)
        );
        // Fixed: the tags move.
        let fixed = fleet(&[
            ("a", a_done),
            ("b", with(old.clone(), "1.31", true)),
            ("c", old),
        ]);
        let r = plan(&s, &fixed, Some(&r.status), t("2026-01-01T00:07:00Z"));
        assert_eq!(r.status.halted, None);
        assert_eq!(r.plans["b"].phase, UpgradePhase::Switching);
    }

    #[test]
    fn a_rollback_is_the_same_rollout_backwards_and_keeps_the_newer_crds() {
        let now = t("2026-01-01T00:00:00Z");
        let s = settings("1.30", 1);
        let new = at("1.31", true);
        let r = plan(
            &s,
            &fleet(&[("a", new.clone()), ("b", new.clone()), ("c", new.clone())]),
            None,
            now,
        );
        assert_eq!(r.status.revision, "1-30");
        assert_eq!(r.status.wave, vec!["a"]);
        assert_eq!(r.plans["a"].base_version.as_deref(), Some("1.31"));
        // After the rollback, no 1.31 anywhere: the CRDs stay at 1.31.
        let mut back = at("1.30", true);
        back.base_version = Some("1.31".into());
        let r = plan(
            &s,
            &fleet(&[("a", back.clone()), ("b", back.clone()), ("c", back)]),
            None,
            now,
        );
        assert_eq!(r.status.phase, "Complete");
        assert!(
            r.plans
                .values()
                .all(|p| p.base_version.as_deref() == Some("1.31"))
        );
    }

    #[test]
    fn a_member_mid_change_when_the_version_goes_back_is_already_there() {
        let now = t("2026-01-01T00:00:00Z");
        let s = settings("1.30", 1);
        let mid = with(at("1.30", true), "1.31", false);
        let r = plan(&s, &fleet(&[("a", mid)]), None, now);
        let a = &r.plans["a"];
        assert_eq!(a.phase, UpgradePhase::Current);
        assert_eq!(a.remove, vec!["1-31".to_string()]);
    }

    #[test]
    fn old_revisions_in_use_or_kept_by_policy_stay() {
        let now = t("2026-01-01T00:00:00Z");
        let mut a = with(at("1.31", true), "1.30", true);
        a.revisions.get_mut("1-30").unwrap().pods = 3;
        let s = settings("1.31", 1);
        let r = plan(&s, &fleet(&[("a", a.clone())]), None, now);
        assert!(r.plans["a"].remove.is_empty());
        assert_eq!(r.plans["a"].phase, UpgradePhase::RemovingOld);
        let mut unused = a.clone();
        unused.revisions.get_mut("1-30").unwrap().pods = 0;
        let mut keep = settings("1.31", 1);
        keep.keep_old = true;
        let r = plan(&keep, &fleet(&[("a", unused)]), None, now);
        assert!(r.plans["a"].remove.is_empty());
        assert_eq!(r.plans["a"].phase, UpgradePhase::Current);
    }

    #[test]
    fn a_revisionless_install_migrates_like_an_old_revision() {
        let now = t("2026-01-01T00:00:00Z");
        let legacy = Installed {
            revisions: [(
                REVISIONLESS.to_string(),
                Revision {
                    version: None,
                    ready: true,
                    ..Default::default()
                },
            )]
            .into(),
            tags_at: Some(REVISIONLESS.into()),
            base_version: None,
        };
        let mut s = settings("1.31", 1);
        s.order = vec!["a"];
        let r = plan(&s, &fleet(&[("a", legacy.clone())]), None, now);
        let a = &r.plans["a"];
        assert_eq!(a.phase, UpgradePhase::Installing);
        // Its version is unknown: it is left alone, only 1-31 is rendered.
        assert_eq!(
            a.apply,
            vec![Render {
                revision: "1-31".into(),
                version: "1.31".into(),
                tags: false
            }]
        );
        let ready = with(legacy, "1.31", true);
        let r = plan(&s, &fleet(&[("a", ready)]), Some(&r.status), now);
        assert_eq!(r.plans["a"].phase, UpgradePhase::Switching);
        assert_eq!(
            r.plans["a"].apply.len(),
            1,
            "the new holder takes the injector over"
        );
    }

    #[test]
    fn in_place_renders_one_revisionless_istiod_everywhere() {
        let mut s = settings("1.31", 1);
        s.strategy = UpgradeStrategy::InPlace;
        let r = plan(
            &s,
            &fleet(&[
                ("a", at("1.30", true)),
                ("b", Installed::default()),
                ("c", Installed::default()),
            ]),
            None,
            t("2026-01-01T00:00:00Z"),
        );
        for p in r.plans.values() {
            assert_eq!(
                p.apply,
                vec![Render {
                    revision: REVISIONLESS.into(),
                    version: "1.31".into(),
                    tags: true
                }]
            );
        }
        assert_eq!(r.status.phase, "RollingOut");
    }
}
