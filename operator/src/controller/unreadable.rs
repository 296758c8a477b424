//! Federations the operator cannot read. kube-runtime's watcher decodes a
//! whole page of a list at once, so one stored MeshFederation that does not
//! decode (a value stored before admission refused it, or one a newer
//! meshfed wrote, read after a downgrade) failed every list, and with it
//! every federation's reconcile, from the operator's next start or relist
//! on. The controller therefore watches federations untyped and decodes
//! each one here: one it cannot read is set aside, with a `Ready`
//! condition that names the field, and the others carry on.
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher::Event;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;
use tracing::warn;

use crate::api::{MeshFederation, MeshFederationStatus};
use crate::fleet::status::{ConditionReason, READY};
use crate::render::field_manager;

/// The `Ready` reason of a federation whose spec the operator cannot read.
const SPEC_UNREADABLE: &str = ConditionReason::SpecUnreadable.as_str();

/// Why a stored federation cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// Where, as a path: `spec.failover.outlierDetection.interval`.
    pub field: String,
    /// What the decoder said of it.
    pub problem: String,
}

impl Unreadable {
    /// The `Ready` message: what is wrong, the fix, and what holds until then.
    pub fn message(&self, federation: &str) -> String {
        format!(
            "meshfed cannot read {}: {}. Fix that field (kubectl edit meshfederation {federation}); until then the federation's own pass does not run: spec changes are not applied, the rest of this status is not updated, and deleting it waits for the fix; member workers this operator process already runs go on with the last readable spec (a restarted operator starts none)",
            self.field, self.problem
        )
    }
}

/// The federation stored as `obj`. A status the operator cannot read is
/// left out (the next reconcile writes a new one): only the spec can set a
/// federation aside.
pub fn decode(obj: &DynamicObject) -> Result<MeshFederation, Unreadable> {
    let mut value = serde_json::to_value(obj).map_err(|e| Unreadable {
        field: "metadata".into(),
        problem: e.to_string(),
    })?;
    let status = value.as_object_mut().and_then(|o| o.remove("status"));
    let mut fed = match attempt(&value) {
        Ok(fed) => fed,
        Err(failure) => return Err(locate(&value, failure)),
    };
    fed.status = status.and_then(|s| quietly(|| serde_json::from_value(s).ok()).ok().flatten());
    Ok(fed)
}

/// What the typed store and the controller get of one untyped watcher
/// event, and the object to set aside, if any. An unreadable object is left
/// out of a (re)list, and a change that makes one unreadable removes it
/// from the store, so that the federation's pass never runs on an older
/// spec. Member workers already running are not stopped: they keep the
/// members as the last readable spec had them until the process exits.
pub fn readable(
    event: Event<DynamicObject>,
) -> (
    Option<Event<MeshFederation>>,
    Option<(DynamicObject, Unreadable)>,
) {
    match event {
        Event::Init => (Some(Event::Init), None),
        Event::InitDone => (Some(Event::InitDone), None),
        Event::InitApply(obj) => match decode(&obj) {
            Ok(fed) => (Some(Event::InitApply(fed)), None),
            Err(why) => (None, Some((obj, why))),
        },
        Event::Apply(obj) => match decode(&obj) {
            Ok(fed) => (Some(Event::Apply(fed)), None),
            Err(why) => (placeholder(&obj).map(Event::Delete), Some((obj, why))),
        },
        Event::Delete(obj) => (
            decode(&obj)
                .ok()
                .or_else(|| placeholder(&obj))
                .map(Event::Delete),
            None,
        ),
    }
}

/// A federation with `obj`'s name and an empty spec: enough for the store
/// to forget the object.
fn placeholder(obj: &DynamicObject) -> Option<MeshFederation> {
    let mut fed = MeshFederation::new(
        &obj.name_any(),
        serde_json::from_value(serde_json::json!({"meshID": "", "members": []})).ok()?,
    );
    fed.metadata = obj.metadata.clone();
    Some(fed)
}

/// Logs why `obj` is set aside and says so in its status: `Ready` False,
/// reason SpecUnreadable, the rest of its last status kept. Written only
/// when that changes it, so the write's own watch event ends here.
pub async fn set_aside(client: &Client, obj: &DynamicObject, why: &Unreadable) {
    let name = obj.name_any();
    let previous: Option<MeshFederationStatus> = obj.data.get("status").and_then(|s| {
        quietly(|| serde_json::from_value(s.clone()).ok())
            .ok()
            .flatten()
    });
    let status = status_of(
        previous.clone(),
        obj.metadata.generation,
        &name,
        why,
        Timestamp::now(),
    );
    if previous.as_ref() == Some(&status) {
        return;
    }
    warn!(federation = %name, field = %why.field, problem = %why.problem, "cannot read the federation; not reconciled until the field is fixed");
    let api =
        Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<MeshFederation>(&()));
    let patch = serde_json::json!({
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "MeshFederation",
        "status": status,
    });
    if let Err(e) = api
        .patch_status(
            &name,
            &PatchParams::apply(&field_manager(&name)).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        warn!(federation = %name, error = %e, "writing the status of an unreadable federation failed");
    }
}

/// `previous` with `Ready` False for `why`, describing `generation`.
fn status_of(
    previous: Option<MeshFederationStatus>,
    generation: Option<i64>,
    federation: &str,
    why: &Unreadable,
    now: Timestamp,
) -> MeshFederationStatus {
    let mut status = previous.unwrap_or_default();
    status.observed_generation = generation;
    let old = status.conditions.iter().position(|c| c.type_ == READY);
    let since = old
        .map(|i| &status.conditions[i])
        .filter(|c| c.status == "False")
        .map_or(Time(now), |c| c.last_transition_time.clone());
    let ready = Condition {
        type_: READY.into(),
        status: "False".into(),
        reason: SPEC_UNREADABLE.into(),
        message: why.message(federation),
        observed_generation: generation,
        last_transition_time: since,
    };
    match old {
        Some(i) => status.conditions[i] = ready,
        None => status.conditions.push(ready),
    }
    status
}

/// How decoding failed.
enum Failure {
    Decode(serde_json::Error),
    /// A decoder panicked (kube's Duration on a number too large for it).
    Panic(String),
}

fn attempt(value: &Value) -> Result<MeshFederation, Failure> {
    match quietly(|| serde_json::from_value::<MeshFederation>(value.clone())) {
        Ok(Ok(fed)) => Ok(fed),
        Ok(Err(e)) => Err(Failure::Decode(e)),
        Err(panic) => Err(Failure::Panic(panic)),
    }
}

/// The field `failure` is about. A decode error is located by decoding
/// again from text with every value on a line of its own: the error's line
/// is the field's. A panic carries no position: the field is the first
/// value whose removal lets the decoder finish.
fn locate(value: &Value, failure: Failure) -> Unreadable {
    match failure {
        Failure::Decode(e) => {
            let mut text = String::new();
            let mut lines = Vec::new();
            write_lines(value, "", &mut text, &mut lines);
            let located = match quietly(|| serde_json::from_str::<MeshFederation>(&text)) {
                Ok(Err(again)) => lines.get(again.line().wrapping_sub(1)).cloned(),
                _ => None,
            };
            Unreadable {
                field: located.unwrap_or_else(|| "spec".into()),
                problem: without_position(&e),
            }
        }
        Failure::Panic(panic) => {
            let mut leaves = Vec::new();
            collect_leaves(value, "", "", &mut leaves);
            let field = leaves
                .into_iter()
                .filter(|(path, _)| path.starts_with("spec"))
                .find(|(_, pointer)| {
                    let mut without = value.clone();
                    if let Some(v) = without.pointer_mut(pointer) {
                        *v = Value::Null;
                    }
                    !matches!(attempt(&without), Err(Failure::Panic(_)))
                })
                .map_or_else(|| "spec".to_string(), |(path, _)| path);
            Unreadable {
                field,
                problem: format!("out of range ({panic})"),
            }
        }
    }
}

/// serde_json's message without its " at line L column C" (a position in
/// text the user never saw).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&position).unwrap_or(&text).to_string()
}

/// `value` as JSON with every scalar, and every brace and bracket, on a
/// line of its own; `lines[i]` is the path of line `i + 1` (a closing brace
/// belongs to its object: a missing field is reported there).
fn write_lines(value: &Value, path: &str, text: &mut String, lines: &mut Vec<String>) {
    fn line(text: &mut String, lines: &mut Vec<String>, path: &str, s: &str) {
        text.push_str(s);
        text.push('\n');
        lines.push(path.to_string());
    }
    match value {
        Value::Object(map) => {
            line(text, lines, path, "{");
            for (i, (key, v)) in map.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&Value::String(key.clone()).to_string());
                text.push(':');
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                write_lines(v, &child, text, lines);
            }
            line(text, lines, path, "}");
        }
        Value::Array(items) => {
            line(text, lines, path, "[");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                write_lines(v, &format!("{path}[{i}]"), text, lines);
            }
            line(text, lines, path, "]");
        }
        scalar => line(text, lines, path, &scalar.to_string()),
    }
}

/// Every scalar in `value`: its path and its JSON pointer.
fn collect_leaves(value: &Value, path: &str, pointer: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let escaped = key.replace('~', "~0").replace('/', "~1");
                collect_leaves(v, &child, &format!("{pointer}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_leaves(v, &format!("{path}[{i}]"), &format!("{pointer}/{i}"), out);
            }
        }
        _ => out.push((path.to_string(), pointer.to_string())),
    }
}

thread_local! {
    /// Set while this thread decodes in [`quietly`].
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into its message without printing it: a
/// stored value must not take the operator down, nor fill its log while
/// the field is located.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder panicked".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kube::api::ObjectList;
    use kube::runtime::{WatchStreamExt, reflector};
    use serde_json::json;

    fn stored(name: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "meshfed.io/v1alpha1",
            "kind": "MeshFederation",
            "metadata": {"name": name, "generation": 3, "resourceVersion": "7"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn spec() -> Value {
        json!({
            "meshID": "mesh1",
            "members": [{
                "name": "east",
                "network": "n1",
                "credentials": {"secretRef": {"name": "east-kubeconfig"}},
            }],
        })
    }

    fn with(path: &str, value: Value) -> Value {
        let mut spec = spec();
        let mut at = &mut spec;
        let keys: Vec<&str> = path.split('.').collect();
        for key in &keys[..keys.len() - 1] {
            at = at
                .as_object_mut()
                .unwrap()
                .entry(key.to_string())
                .or_insert_with(|| json!({}));
        }
        at[keys[keys.len() - 1]] = value;
        spec
    }

    #[test]
    fn a_readable_federation_decodes_as_before() {
        let fed = decode(&stored(
            "ok",
            with("failover.withdrawal.gracePeriod", json!("45s")),
        ))
        .unwrap();
        assert_eq!(fed.name_any(), "ok");
        assert_eq!(fed.spec.withdrawal().unwrap().grace.as_secs(), 45);
    }

    #[test]
    fn the_field_that_cannot_be_read_is_named() {
        for (path, value, problem) in [
            (
                "failover.outlierDetection.interval",
                json!("10 s"),
                "invalid",
            ),
            (
                "failover.outlierDetection.baseEjectionTime",
                json!("30"),
                "missing a unit",
            ),
            (
                "failover.withdrawal.maxWithdrawn",
                json!(3_000_000_000_i64),
                "i32",
            ),
            ("ca.keyAlgorithm", json!("ED25519"), "unknown variant"),
        ] {
            let why = decode(&stored("bad", with(path, value))).unwrap_err();
            assert_eq!(why.field, format!("spec.{path}"), "{why:?}");
            assert!(why.problem.contains(problem), "{why:?}");
            assert!(
                !why.problem.contains("line"),
                "no position in text the user never saw: {why:?}"
            );
        }
        let mut missing = spec();
        missing["members"][0]
            .as_object_mut()
            .unwrap()
            .remove("network");
        let why = decode(&stored("bad", missing)).unwrap_err();
        assert_eq!(why.field, "spec.members[0]");
        assert!(why.problem.contains("network"), "{why:?}");
    }

    /// kube's Duration multiplies without checking: a number too large for
    /// it panics, which took the whole operator down.
    #[test]
    fn a_duration_too_large_is_named_instead_of_panicking() {
        let huge = "99999999999999999999h";
        assert!(
            quietly(|| huge.parse::<kube::core::Duration>()).is_err(),
            "kube-core panics on it"
        );
        let why = decode(&stored(
            "bad",
            with("failover.outlierDetection.interval", json!(huge)),
        ))
        .unwrap_err();
        assert_eq!(why.field, "spec.failover.outlierDetection.interval");
        assert!(why.problem.starts_with("out of range"), "{why:?}");
    }

    #[test]
    fn a_status_that_cannot_be_read_is_left_out() {
        let mut obj = stored("ok", spec());
        obj.data["status"] = json!({"memberCount": "three"});
        let fed = decode(&obj).unwrap();
        assert_eq!(fed.status, None);
        obj.data["status"] = json!({"memberCount": 1});
        assert_eq!(decode(&obj).unwrap().status.unwrap().member_count, 1);
    }

    /// What kube-runtime's typed watcher did: one bad item fails the page.
    #[test]
    fn one_bad_federation_fails_a_typed_list() {
        let list = json!({
            "apiVersion": "meshfed.io/v1alpha1",
            "kind": "MeshFederationList",
            "metadata": {"resourceVersion": "9"},
            "items": [
                stored("a", spec()),
                stored("bad", with("failover.outlierDetection.interval", json!("10 s"))),
                stored("b", spec()),
            ],
        });
        assert!(serde_json::from_value::<ObjectList<MeshFederation>>(list.clone()).is_err());
        let mut huge = list;
        huge["items"][1]["spec"]["failover"]["outlierDetection"]["interval"] =
            json!("99999999999999999999h");
        assert!(
            quietly(|| serde_json::from_value::<ObjectList<MeshFederation>>(huge)).is_err(),
            "and a duration too large for kube's Duration panicked in the watcher"
        );
    }

    /// The store and the controller get every readable federation of a
    /// list; an unreadable one is set aside, and one that becomes
    /// unreadable leaves the store.
    #[tokio::test]
    async fn one_bad_federation_does_not_keep_the_others_from_the_store() {
        let bad = stored(
            "bad",
            with("failover.outlierDetection.interval", json!("10 s")),
        );
        let events = vec![
            Event::Init,
            Event::InitApply(stored("a", spec())),
            Event::InitApply(bad.clone()),
            Event::InitApply(stored("b", spec())),
            Event::InitDone,
            Event::Apply(stored("c", spec())),
            Event::Apply(stored("a", with("ca.keyAlgorithm", json!("ED25519")))),
        ];
        let mut set_aside = Vec::new();
        let mut typed = Vec::new();
        for event in events {
            let (event, unreadable) = readable(event);
            typed.extend(event);
            set_aside.extend(unreadable.map(|(obj, why)| (obj.name_any(), why.field)));
        }
        assert_eq!(
            set_aside,
            [
                (
                    "bad".to_string(),
                    "spec.failover.outlierDetection.interval".to_string()
                ),
                ("a".to_string(), "spec.ca.keyAlgorithm".to_string()),
            ]
        );
        let (store, writer) = reflector::store::<MeshFederation>();
        let applied: Vec<String> =
            reflector(writer, futures::stream::iter(typed.into_iter().map(Ok)))
                .applied_objects()
                .map(|f| f.unwrap().name_any())
                .collect()
                .await;
        assert_eq!(applied, ["a", "b", "c"]);
        let mut names: Vec<String> = store.state().iter().map(|f| f.name_any()).collect();
        names.sort();
        assert_eq!(
            names,
            ["b", "c"],
            "a left the store when it became unreadable"
        );
    }

    #[test]
    fn the_status_names_the_field_and_is_written_once() {
        let why = Unreadable {
            field: "spec.failover.outlierDetection.interval".into(),
            problem: "invalid unit".into(),
        };
        let previous = MeshFederationStatus {
            member_count: 2,
            conditions: vec![Condition {
                type_: READY.into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: "2/2 members ready".into(),
                observed_generation: Some(2),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        };
        let now = Timestamp::from_second(1_000).unwrap();
        let status = status_of(Some(previous), Some(3), "prod", &why, now);
        assert_eq!(
            (status.member_count, status.observed_generation),
            (2, Some(3))
        );
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", SPEC_UNREADABLE)
        );
        assert!(
            ready
                .message
                .contains("spec.failover.outlierDetection.interval: invalid unit")
        );
        assert!(ready.message.contains("kubectl edit meshfederation prod"));
        assert_eq!(ready.last_transition_time, Time(now));
        let later = Timestamp::from_second(2_000).unwrap();
        assert_eq!(
            status_of(Some(status.clone()), Some(3), "prod", &why, later),
            status,
            "nothing new to write: the write's own watch event ends there"
        );
    }
}
