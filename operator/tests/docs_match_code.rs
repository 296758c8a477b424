//! What users read names only what the code has, and the reference lists
//! everything the code emits.
//!
//! Read: README.md, docs/*.md and the CRD's descriptions. Checked there:
//! metric names (`meshfed_*`), annotations, labels and finalizers
//! (`meshfed.io/*`), flags on a line that runs `kubectl meshfed` or
//! `meshfed-operator`, and every backticked CamelCase word (condition
//! types and reasons, Event reasons, phases, kinds). The other way round,
//! docs/reference.md must have a row for every condition type, condition
//! reason, member health reason, metric and annotation the code has (Event
//! reasons: docs/events.md, kept in step by a unit test in events.rs).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshfed::events::Reason;
use meshfed::fleet::{failover, status};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The pages users read, by path relative to the workspace.
fn documents() -> Vec<(String, String)> {
    let root = workspace();
    let mut paths = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.ends_with(".md").then(|| format!("docs/{name}"))
        })
        .collect();
    docs.sort();
    paths.extend(docs);
    paths.push("config/crd/meshfed.io_meshfederations.yaml".to_string());
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(root.join(&p)).unwrap_or_else(|e| panic!("{p}: {e}"));
            (p, text)
        })
        .collect()
}

/// Every file under `dir` (recursively) whose name ends with one of `exts`.
fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, exts, out);
        } else if exts.iter().any(|x| path.to_string_lossy().ends_with(x)) {
            out.push(path);
        }
    }
}

/// The words of everything meshfed ships: its code, chart, manifests and
/// test bed. A CamelCase word the docs name must be one of them.
fn shipped_words() -> BTreeSet<String> {
    let root = workspace();
    let mut files = Vec::new();
    for dir in ["operator/src", "e2e/src", "charts", "config", "deploy"] {
        files_under(
            &root.join(dir),
            &[".rs", ".yaml", ".yml", ".lua", ".tpl", ".txt", ".json"],
            &mut files,
        );
    }
    let mut words = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        words.extend(
            text.split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_string),
        );
    }
    words
}

/// Spans between single backticks, outside fenced code blocks.
fn backticked(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.push(inside.to_string());
        }
    }
    spans
}

/// `FooBar`, `ControlPlanesUpToDate`: an upper-case start, lower-case after
/// it and at least one more upper-case letter.
fn is_camel_case(word: &str) -> bool {
    let mut chars = word.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric())
        && word.chars().any(|c| c.is_ascii_lowercase())
        && word.chars().skip(1).any(|c| c.is_ascii_uppercase())
        && !word.chars().skip(1).take(1).any(|c| c.is_ascii_uppercase())
}

/// Tokens that start with `prefix` and continue with `[a-z0-9_.-/]`.
fn tokens_with_prefix(
    text: &str,
    prefix: &str,
    continues: impl Fn(char) -> bool,
) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        let tail = &rest[at + prefix.len()..];
        let len = tail.find(|c: char| !continues(c)).unwrap_or(tail.len());
        let token = tail[..len].trim_end_matches(['.', '-', '_', '/']);
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            && !token.is_empty()
        {
            found.insert(format!("{prefix}{token}"));
        }
        rest = &tail[len..];
    }
    found
}

/// `meshfed_*` metric families, from docs/reference.md (a unit test in
/// `telemetry::metrics` checks those rows against what the operator
/// serves).
fn metric_names() -> BTreeSet<String> {
    reference_rows()
        .into_iter()
        .filter(|r| r.starts_with("meshfed_"))
        .collect()
}

/// Whether `name` (as written in a doc) is a metric, a histogram's series
/// counted in.
fn is_metric(name: &str, metrics: &BTreeSet<String>) -> bool {
    metrics.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| metrics.contains(base))
        })
}

/// `meshfed.io/...` keys in the operator's string literals.
fn annotation_keys() -> BTreeSet<String> {
    let mut files = Vec::new();
    files_under(&workspace().join("operator/src"), &[".rs"], &mut files);
    let mut keys = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        keys.extend(
            tokens_with_prefix(&text, "\"meshfed.io/", |c| {
                c.is_ascii_alphanumeric() || c == '-' || c == '.'
            })
            .into_iter()
            .map(|k| k.trim_start_matches('"').to_string())
            // The API group's version (`meshfed.io/v1alpha1`) is not a key.
            .filter(|k| !k.starts_with("meshfed.io/v1")),
        );
    }
    keys
}

/// Long flags of a binary and all its subcommands, from `--help`.
fn flags_of(binary: &str, subcommands: &[&str]) -> BTreeSet<String> {
    let mut flags = BTreeSet::from(["--help".to_string(), "--version".to_string()]);
    let mut invocations: Vec<Vec<&str>> = vec![vec!["--help"]];
    invocations.extend(subcommands.iter().map(|s| vec![*s, "--help"]));
    for args in invocations {
        let out = Command::new(binary)
            .args(&args)
            .output()
            .expect("run --help");
        let help = String::from_utf8_lossy(&out.stdout);
        flags.extend(tokens_with_prefix(&help, "--", |c| {
            c.is_ascii_lowercase() || c == '-'
        }));
    }
    flags
}

/// Subcommands listed in a binary's `--help`.
fn subcommands_of(binary: &str) -> Vec<String> {
    let out = Command::new(binary)
        .arg("--help")
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// Every flag written on a line that runs `command`, in prose or in a
/// code block (not a helm line: there `meshfed-operator` is the release).
fn flags_on_lines_of(text: &str, command: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.contains("helm "))
        .filter_map(|l| l.find(command).map(|at| &l[at + command.len()..]))
        .flat_map(|rest| tokens_with_prefix(rest, "--", |c| c.is_ascii_lowercase() || c == '-'))
        .collect()
}

#[test]
fn the_docs_name_only_metrics_annotations_and_flags_that_exist() {
    let metrics = metric_names();
    assert!(
        metrics.contains("meshfed_reconciles_total"),
        "metrics read: {metrics:?}"
    );
    let keys = annotation_keys();
    assert!(keys.contains("meshfed.io/adopt"), "keys read: {keys:?}");
    let plugin = env!("CARGO_BIN_EXE_kubectl-meshfed");
    let plugin_subcommands = subcommands_of(plugin);
    let plugin_flags = flags_of(
        plugin,
        &plugin_subcommands
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let operator_flags = flags_of(env!("CARGO_BIN_EXE_meshfed-operator"), &[]);
    assert!(operator_flags.contains("--resync") && plugin_flags.contains("--federation"));

    let mut unknown = Vec::new();
    for (path, text) in documents() {
        for name in tokens_with_prefix(&text, "meshfed_", |c| c.is_ascii_lowercase() || c == '_') {
            if !is_metric(&name, &metrics) {
                unknown.push(format!("{path}: metric {name}"));
            }
        }
        for key in tokens_with_prefix(&text, "meshfed.io/", |c| {
            c.is_ascii_alphanumeric() || c == '-'
        }) {
            // The API group's version is not a key.
            if !keys.contains(&key) && !key.starts_with("meshfed.io/v1") {
                unknown.push(format!("{path}: key {key}"));
            }
        }
        for flag in flags_on_lines_of(&text, "kubectl meshfed") {
            if !plugin_flags.contains(&flag) {
                unknown.push(format!("{path}: kubectl meshfed {flag}"));
            }
        }
        let operator_lines: String = text
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.ends_with("meshfed-operator"))
            })
            .collect::<Vec<_>>()
            .join("\n");
        for flag in flags_on_lines_of(&operator_lines, "meshfed-operator") {
            if !operator_flags.contains(&flag) {
                unknown.push(format!("{path}: meshfed-operator {flag}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "the docs name what the code does not have:\n{}",
        unknown.join("\n")
    );
}

/// CamelCase words the docs name that belong to other projects, or to a
/// design meshfed chose not to build.
const NOT_MESHFEDS: [&str; 8] = [
    "ExternalSecret",              // External Secrets' kind, in argocd.md
    "ArgoCD",                      // the Argo CD Operator's kind
    "SkipDryRunOnMissingResource", // an Argo CD sync option
    "CredentialsController",       // istiod's code, quoted in istio.md
    "HasSynced",                   // istiod's code, quoted in istio.md
    "PortForward",                 // kwok's kind, for a test bed not built yet
    "IstioRevision",               // sail-operator's kind, compared with in architecture.md
    "FederationMember",            // the child resource architecture.md says why not
];

#[test]
fn every_camel_case_word_the_docs_name_is_in_what_meshfed_ships() {
    let mut words = shipped_words();
    words.extend(NOT_MESHFEDS.iter().map(|w| w.to_string()));
    let mut unknown = BTreeSet::new();
    for (path, text) in documents() {
        for span in backticked(&text) {
            for word in span.split(|c: char| !c.is_ascii_alphanumeric()) {
                if is_camel_case(word) && !words.contains(word) {
                    unknown.insert(format!("{path}: `{word}`"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "backticked words in the docs that nothing meshfed ships has (a reason, type or phase that does not exist?):\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The first cell of every table row in docs/reference.md, backticks
/// removed.
fn reference_rows() -> BTreeSet<String> {
    let text =
        std::fs::read_to_string(workspace().join("docs/reference.md")).expect("docs/reference.md");
    text.lines()
        .filter_map(|l| {
            let cell = l.strip_prefix('|')?.split('|').next()?.trim();
            Some(cell.strip_prefix('`')?.strip_suffix('`')?.to_string())
        })
        .collect()
}

#[test]
fn the_reference_lists_everything_the_code_emits() {
    let rows = reference_rows();
    let mut expected: Vec<String> = Vec::new();
    expected.extend(status::CONDITION_TYPES.iter().map(|t| t.to_string()));
    expected.extend(
        status::ConditionReason::ALL
            .iter()
            .map(|r| r.as_str().to_string()),
    );
    expected.extend(failover::HEALTH_REASONS.iter().map(|r| r.to_string()));
    expected.extend(annotation_keys());
    let missing: Vec<&String> = expected.iter().filter(|e| !rows.contains(*e)).collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md has no row for: {missing:?}"
    );
    // Event reasons have their own page; the reference does not repeat them.
    let events: BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    let stale: Vec<&String> = rows
        .iter()
        .filter(|r| {
            !expected.contains(r) && !events.contains(r.as_str()) && !r.starts_with("meshfed_")
        })
        .collect();
    assert!(
        stale.is_empty(),
        "docs/reference.md lists what the code does not have: {stale:?}"
    );
}

#[test]
fn the_scanners_find_what_they_look_for() {
    assert!(is_camel_case("ControlPlanesUpToDate") && is_camel_case("TrustBoth"));
    assert!(
        !is_camel_case("Ready")
            && !is_camel_case("HTTP")
            && !is_camel_case("ONE_Two")
            && !is_camel_case("kubeConfig")
    );
    assert_eq!(
        backticked("a `One` b `Two`\n```\n`Three`\n```\n`Four`"),
        vec!["One", "Two", "Four"]
    );
    assert_eq!(
        tokens_with_prefix(
            "see meshfed_a_total, xmeshfed_b and meshfed_c.",
            "meshfed_",
            |c| c.is_ascii_lowercase() || c == '_'
        ),
        BTreeSet::from(["meshfed_a_total".to_string(), "meshfed_c".to_string()])
    );
    assert_eq!(
        flags_on_lines_of(
            "run `kubectl meshfed join --federation prod --network n1`\nkubectl apply --server-side",
            "kubectl meshfed"
        ),
        BTreeSet::from(["--federation".to_string(), "--network".to_string()])
    );
}
