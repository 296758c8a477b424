//! The drift test: does a live object already say what meshfed would apply?
//! Pure, so that every reconcile path asks it the same way.
use serde_json::Value;

/// Whether `live` says everything `desired` says: every field of `desired` is
/// in `live` with an equal value; lists must match element by element. Fields
/// only `live` has (status, defaults, other managers' fields) are ignored. The
/// API server's own rewriting is not drift: an empty or zero desired value
/// may be absent (it drops them), and in resource quantities ("requests",
/// "limits", "hard", "sizeLimit") equal values are equal however written
/// ("2048Mi" is stored as "2Gi", a number 1 as "1").
pub fn contains(live: &Value, desired: &Value) -> bool {
    difference(live, desired).is_none()
}

/// Where `live` first fails to say what `desired` says, as a JSON path
/// (`.spec.replicas`, `.rules[0]`); `None` when it says everything.
pub fn difference(live: &Value, desired: &Value) -> Option<String> {
    diff(live, desired, false)
}

/// Fields whose values (or whose map's values) are Kubernetes quantities.
fn holds_quantities(key: &str) -> bool {
    matches!(key, "requests" | "limits" | "hard" | "sizeLimit")
}

fn diff(live: &Value, desired: &Value, quantities: bool) -> Option<String> {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => d.iter().find_map(|(k, dv)| match l.get(k) {
            Some(lv) => {
                diff(lv, dv, quantities || holds_quantities(k)).map(|path| format!(".{k}{path}"))
            }
            None => (!is_zero(dv)).then(|| format!(".{k}")),
        }),
        (Value::Array(l), Value::Array(d)) if l.len() == d.len() => {
            l.iter().zip(d).enumerate().find_map(|(i, (lv, dv))| {
                diff(lv, dv, quantities).map(|path| format!("[{i}]{path}"))
            })
        }
        (l, d) if l == d => None,
        (l, d) if quantities && as_quantity(l).is_some_and(|l| as_quantity(d) == Some(l)) => None,
        _ => Some(String::new()),
    }
}

/// A quantity written as a string or a JSON number.
fn as_quantity(v: &Value) -> Option<i128> {
    match v {
        Value::String(s) => quantity(s),
        Value::Number(n) => quantity(&n.to_string()),
        _ => None,
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// The value of a Kubernetes quantity ("500m", "2Gi", "1e3"), in milli-units
/// so that equal quantities compare equal exactly.
fn quantity(text: &str) -> Option<i128> {
    const SUFFIXES: [(&str, i128); 13] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("m", -1),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| Some((text.strip_suffix(suffix)?, *f)))
        .unwrap_or((text, 1));
    if number.is_empty() || !number.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let (mantissa, exponent) = match number.split_once(['e', 'E']) {
        Some((m, e)) if factor == 1 => (m, e.parse::<i32>().ok()?),
        Some(_) => return None,
        None => (number, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // milli-units: digits * 10^(exponent + 3 - fraction digits) * factor
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let scale = exponent + 3 - fraction.len() as i32;
    let scaled = if scale >= 0 {
        digits.checked_mul(10i128.checked_pow(scale as u32)?)?
    } else {
        let divisor = 10i128.checked_pow((-scale) as u32)?;
        (digits % divisor == 0).then(|| digits / divisor)?
    };
    match factor {
        // The API server rounds sub-milli values up: "1.5m" is stored as "2m".
        -1 => Some((scaled + 999) / 1000),
        f => scaled.checked_mul(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn extra_live_fields_do_not_count_as_drift() {
        let live = json!({"metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}}, "status": {}});
        assert!(contains(
            &live,
            &json!({"metadata": {"name": "a", "labels": {"x": "1"}}})
        ));
    }

    #[test]
    fn changed_missing_or_reordered_values_are_drift() {
        let live = json!({"data": {"k": "v"}, "rules": [{"verbs": ["get", "list"]}]});
        assert!(!contains(&live, &json!({"data": {"k": "w"}})));
        assert!(!contains(&live, &json!({"data": {"other": "v"}})));
        assert!(!contains(
            &live,
            &json!({"rules": [{"verbs": ["list", "get"]}]})
        ));
        assert!(!contains(
            &live,
            &json!({"rules": [{"verbs": ["get", "list"]}, {"verbs": []}]})
        ));
        assert!(contains(
            &live,
            &json!({"rules": [{"verbs": ["get", "list"]}]})
        ));
    }

    #[test]
    fn what_the_api_server_rewrites_is_not_drift() {
        let live = json!({"resources": {"requests": {"cpu": "500m", "memory": "2Gi"}}, "spec": {}});
        assert!(contains(
            &live,
            &json!({"resources": {"requests": {"cpu": "0.5", "memory": "2048Mi"}}})
        ));
        assert!(!contains(
            &live,
            &json!({"resources": {"requests": {"memory": "2047Mi"}}})
        ));
        assert!(contains(
            &live,
            &json!({"spec": {"nodeSelector": {}, "tolerations": [], "hostNetwork": false, "priority": 0, "name": ""}})
        ));
        assert!(!contains(&live, &json!({"spec": {"hostNetwork": true}})));
        assert!(!contains(
            &live,
            &json!({"spec": {"tolerations": [{"key": "a"}]}})
        ));
    }

    #[test]
    fn only_resource_quantities_compare_by_value() {
        let live = json!({"metadata": {"labels": {"v": "1.1"}}, "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}});
        assert!(
            !contains(&live, &json!({"metadata": {"labels": {"v": "1.10"}}})),
            "a label is text, not a quantity"
        );
        assert!(contains(
            &live,
            &json!({"resources": {"limits": {"cpu": 1, "memory": "1024Mi"}}})
        ));
        assert!(!contains(
            &live,
            &json!({"resources": {"limits": {"cpu": 2}}})
        ));
        let volume = json!({"emptyDir": {"sizeLimit": "1Gi"}});
        assert!(contains(
            &volume,
            &json!({"emptyDir": {"sizeLimit": "1024Mi"}})
        ));
    }

    #[test]
    fn the_difference_names_the_path() {
        let live = json!({"spec": {"replicas": 1, "containers": [{"name": "a", "image": "x"}]}});
        assert_eq!(
            difference(&live, &json!({"spec": {"replicas": 2}})).as_deref(),
            Some(".spec.replicas")
        );
        assert_eq!(
            difference(&live, &json!({"spec": {"containers": [{"image": "y"}]}})).as_deref(),
            Some(".spec.containers[0].image")
        );
        assert_eq!(
            difference(&live, &json!({"spec": {"containers": []}})).as_deref(),
            Some(".spec.containers")
        );
        assert_eq!(difference(&live, &json!({"spec": {"replicas": 1}})), None);
    }

    #[test]
    fn quantities_compare_by_value() {
        let q = |s| quantity(s);
        assert_eq!(q("2Gi"), q("2048Mi"));
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_ne!(q("1M"), q("1Mi"));
        assert_eq!(q("1.5m"), q("2m"), "rounded up as the API server does");
        for not_a_quantity in [
            "", "m", "abc", "1h", "v1.2", "1.2.3", "-1", "1e3Mi", "1.31-dev",
        ] {
            assert_eq!(q(not_a_quantity), None, "{not_a_quantity:?}");
        }
    }

    #[test]
    fn null_desired_fields_are_ignored() {
        assert!(contains(&json!({}), &json!({"spec": null})));
        assert!(!contains(&json!({"a": 1}), &json!({"a": null, "b": 2})));
    }
}
