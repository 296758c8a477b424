//! The operator's modules depend on each other without a cycle: model code
//! (`api`, `pki`, `render`, `fleet`) below the code that acts (`member`,
//! `controller`), and a module's children may use what their parent
//! defines only while the parent's own code does not use them back.
//!
//! Dependencies are read from the source: every `crate::`, `super::`,
//! `self::` path and every path through a declared child module, outside
//! comments, literals and `#[cfg(test)]` modules. A name a parent
//! re-exports (`pub use child::Name`, `pub use child::*`) counts as the
//! child's; the re-export itself is not a dependency.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One source file of the library.
struct Module {
    /// Code with comments, literals and test modules removed.
    code: String,
    children: BTreeSet<String>,
}

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_operator_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = read_modules(&src);
    let graph = dependencies(&modules);
    assert!(
        graph.get("member").is_some_and(|d| d.contains("apply")),
        "the reader finds dependencies: {graph:#?}"
    );
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "modules that depend on each other in a loop (break it by moving what they share down):\n{}",
        cycles
            .iter()
            .map(|c| format!("  {}", c.join(" -> ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_reader_sees_through_use_trees_and_finds_a_loop() {
    let code = strip("use super::{a::{B, c}, d};\n// crate::x\nlet s = \"crate::y\";");
    assert_eq!(
        paths(&code),
        vec![
            vec!["super", "a", "B"],
            vec!["super", "a", "c"],
            vec!["super", "d"]
        ]
    );
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            g.entry(to.to_string()).or_default();
            g
        });
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c", "a"]]);
    let code =
        strip("#[cfg(test)]\nmod tests {\n    use crate::z;\n    let c = '{';\n}\nuse crate::w;");
    assert_eq!(paths(&code), vec![vec!["crate", "w"]]);
}

fn read_modules(src: &Path) -> BTreeMap<String, Module> {
    let mut modules = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    dirs.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path == src.join("main.rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut segments: Vec<String> = relative
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            let code = strip(&std::fs::read_to_string(&path).expect("source file"));
            let children = declared_children(&code);
            modules.insert(segments.join("::"), Module { code, children });
        }
    }
    modules
}

/// The code without comments, without the contents of string and character
/// literals, and without `#[cfg(test)]` items.
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && matches!(next, Some('"' | '#')) && !ident_before(&chars, i) {
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let closing: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while j < chars.len() && !chars[j..].iter().collect::<String>().starts_with(&closing) {
                j += 1;
            }
            out.push_str("\"\"");
            i = j + closing.len();
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            out.push_str("' '");
            i += 1;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    without_test_items(&out)
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Removes every item that follows `#[cfg(test)]`: up to its `;` or its
/// balanced braces (literals are already empty, so braces balance).
fn without_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn declared_children(code: &str) -> BTreeSet<String> {
    code.lines()
        .map(str::trim)
        .filter_map(|line| {
            let line = line
                .strip_prefix("pub(crate) ")
                .or_else(|| line.strip_prefix("pub "))
                .unwrap_or(line);
            let name = line.strip_prefix("mod ")?.strip_suffix(';')?;
            Some(name.trim().to_string())
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path in `code` that starts with `crate`, `super`, `self` or any
/// identifier followed by `::`, use trees expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_path = is_ident(chars[i])
            && !ident_before(&chars, i)
            && (i == 0 || chars[i - 1] != ':')
            && !chars[i].is_ascii_digit();
        if !starts_path {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && is_ident(chars[j]) {
            j += 1;
        }
        if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
            let (trees, end) = use_tree(&chars, i);
            found.extend(trees);
            i = end;
        } else {
            i = j;
        }
    }
    found
}

/// Parses a path or use tree at `i`: its expanded paths and where it ends.
fn use_tree(chars: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let skip_space = |mut k: usize| {
        while k < chars.len() && chars[k].is_whitespace() {
            k += 1;
        }
        k
    };
    let mut prefix = Vec::new();
    loop {
        i = skip_space(i);
        if chars.get(i) == Some(&'{') {
            let mut all = Vec::new();
            i += 1;
            loop {
                i = skip_space(i);
                match chars.get(i) {
                    Some('}') => return (all, i + 1),
                    Some(',') => i += 1,
                    None => return (all, i),
                    _ => {
                        let (trees, end) = use_tree(chars, i);
                        all.extend(trees.into_iter().map(|t| [prefix.clone(), t].concat()));
                        i = end.max(i + 1);
                    }
                }
            }
        }
        let start = i;
        while i < chars.len() && (is_ident(chars[i]) || chars[i] == '*') {
            i += 1;
        }
        if start == i {
            return (vec![prefix], i);
        }
        prefix.push(chars[start..i].iter().collect());
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Where a module's path points after `base` (`crate`, `super`, `self` or
/// a child's name): the deepest module it names, and the item after it.
fn resolve(
    modules: &BTreeMap<String, Module>,
    from: &str,
    path: &[String],
) -> Option<(String, Option<String>)> {
    let here: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let (mut current, rest): (Vec<&str>, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.clone(), &path[1..]),
        "super" => {
            let mut up = here.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                up.pop();
                rest = &rest[1..];
            }
            (up, rest)
        }
        child if modules[from].children.contains(child) => (here.clone(), path),
        _ => return None,
    };
    let mut item = None;
    for segment in rest {
        let key = current
            .iter()
            .copied()
            .chain([segment.as_str()])
            .collect::<Vec<_>>()
            .join("::");
        if modules.contains_key(&key) {
            current.push(segment);
        } else {
            item = Some(segment.clone());
            break;
        }
    }
    Some((current.join("::"), item))
}

/// The child of `module` that `name` is re-exported from, if it is.
fn exporting_child(modules: &BTreeMap<String, Module>, module: &str, name: &str) -> Option<String> {
    let m = &modules[module];
    paths(&m.code)
        .into_iter()
        .filter(|p| p.len() >= 2 && m.children.contains(&p[0]))
        .find(|p| {
            let child = format!("{module}::{}", p[0])
                .trim_start_matches("::")
                .to_string();
            match p.last().map(String::as_str) {
                Some("*") => defines(&modules[&child].code, name),
                Some(last) => last == name,
                None => false,
            }
        })
        .map(|p| {
            format!("{module}::{}", p[0])
                .trim_start_matches("::")
                .to_string()
        })
}

/// Whether `code` defines a public item called `name`.
fn defines(code: &str, name: &str) -> bool {
    [
        "fn", "struct", "enum", "const", "type", "trait", "static", "mod",
    ]
    .iter()
    .any(|kind| code.contains(&format!("pub {kind} {name}")))
}

fn dependencies(modules: &BTreeMap<String, Module>) -> Graph {
    let mut graph = Graph::new();
    for (name, module) in modules {
        let deps = graph.entry(name.clone()).or_default();
        // A re-export is not a use of the child.
        let code: String = module
            .code
            .lines()
            .filter(|l| {
                let l = l.trim();
                !(l.starts_with("pub use ") || l.starts_with("pub(crate) use "))
                    || !module
                        .children
                        .iter()
                        .any(|c| l.contains(&format!("use {c}::")))
            })
            .collect::<Vec<_>>()
            .join("\n");
        for path in paths(&code) {
            let Some((target, item)) = resolve(modules, name, &path) else {
                continue;
            };
            let is_ancestor = target.is_empty() || name.starts_with(&format!("{target}::"));
            let target = match (&item, is_ancestor) {
                (Some(item), true) => exporting_child(modules, &target, item).unwrap_or(target),
                _ => target,
            };
            if target != *name && !target.is_empty() {
                deps.insert(target);
            }
        }
    }
    graph
}

/// Every cycle's modules (one per strongly connected set of two or more),
/// each closed by its first module again.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let names: Vec<&String> = graph.keys().collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    let mut seen = BTreeSet::new();
    for start in names {
        if seen.contains(start) {
            continue;
        }
        // The shortest way back to `start`, breadth first.
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closed = None;
        while let Some(at) = queue.pop_front() {
            for next in graph.get(at).into_iter().flatten() {
                if next == start {
                    closed = Some(at);
                    queue.clear();
                    break;
                }
                if !previous.contains_key(next) {
                    previous.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        if let Some(mut at) = closed {
            let mut cycle = vec![start.clone()];
            while at != start {
                cycle.push(at.clone());
                at = previous[at];
            }
            cycle[1..].reverse();
            cycle.push(start.clone());
            seen.extend(cycle.iter().cloned());
            found.push(cycle);
        }
    }
    found
}
