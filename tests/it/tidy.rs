//! The shape of the code and its docs, checked: no import cycles between modules, and every
//! path ARCHITECTURE.md names exists. These read the source tree only (no kedge process).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `src/control/cluster.rs` → `["control", "cluster"]`.
/// `None` for test modules (`tests.rs`) and the crate roots.
fn module_of(file: &Path, src: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "tests") || matches!(parts.as_slice(), [p] if p == "lib" || p == "main") {
        return None;
    }
    Some(parts)
}

/// The code of a file without comments and without its inline `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths a file's code names: `crate::a::b…`, `super::…`, `self::…`, with one level
/// of braces (`use crate::{a, b::c}`). Paths are as written (items included); the caller keeps
/// the longest prefix that is a module.
fn references(code: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (start, kw) in [("crate::", "crate"), ("super::", "super"), ("self::", "self")] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (is_ident(code[..at].chars().last().unwrap_or(' ')) || code[..at].ends_with("::")) {
                continue;
            }
            // The base: crate → [], super(::super)* → my parents, self → me.
            let mut base: Vec<String> = match kw {
                "crate" => Vec::new(),
                "super" => me[..me.len().saturating_sub(1)].to_vec(),
                _ => me.to_vec(),
            };
            let mut rest = &code[from..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            use_tree(base, rest, &mut out);
        }
    }
    out
}

/// Reads one path or use tree at the start of `text` (`a::b::{c, d::{e, self}}`), adding
/// each leaf's path to `out`.
fn use_tree(mut base: Vec<String>, text: &str, out: &mut Vec<Vec<String>>) {
    let mut rest = text;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            // Split at the commas of this level, up to the matching brace.
            let (mut depth, mut item_start) = (0, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        use_tree(base.clone(), group[item_start..i].trim(), out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        use_tree(base.clone(), group[item_start..i].trim(), out);
                        item_start = i + 1;
                    }
                    _ => {}
                }
            }
            return;
        }
        let ident: String = rest.chars().take_while(|&c| is_ident(c)).collect();
        if ident.is_empty() {
            break;
        }
        rest = &rest[ident.len()..];
        if ident != "self" {
            base.push(ident);
        }
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    out.push(base);
}

/// Finds a cycle in a directed graph, if any: the nodes on it, in order.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let i = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n.as_str())
            && let Some(c) = visit(n, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Modules that import from each other, at every level: between top-level modules (each with
/// everything under it), and between the children of any one module. A module using its own
/// parent or children is not a cycle (that is what a module tree is); two siblings, or two
/// subtrees, depending on each other are.
#[test]
fn no_import_cycles() {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().filter_map(|f| module_of(f, &src)).collect();
    // (from, to) module paths, each the longest module prefix of what the code names.
    let mut deps: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    for f in &files {
        let Some(me) = module_of(f, &src) else { continue };
        let text = std::fs::read_to_string(f).expect("source file");
        for r in references(&code(&text), &me) {
            let to = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| modules.contains(p));
            if let Some(to) = to {
                deps.insert((me.clone(), to));
            }
        }
    }
    // Every module with children, and the crate root: the graph over its children.
    let mut parents: BTreeSet<Vec<String>> = modules.iter().map(|m| m[..m.len() - 1].to_vec()).collect();
    parents.insert(Vec::new());
    let mut problems = Vec::new();
    for parent in parents {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let child =
            |m: &Vec<String>| (m.len() > parent.len() && m.starts_with(&parent)).then(|| m[parent.len()].clone());
        for (from, to) in &deps {
            if let (Some(a), Some(b)) = (child(from), child(to))
                && a != b
            {
                edges.entry(a).or_default().insert(b);
            }
        }
        if let Some(c) = cycle(&edges) {
            let prefix = if parent.is_empty() {
                String::new()
            } else {
                format!("{}::", parent.join("::"))
            };
            problems.push(c.iter().map(|m| format!("{prefix}{m}")).collect::<Vec<_>>().join(" → "));
        }
    }
    assert!(problems.is_empty(), "import cycles:\n{}", problems.join("\n"));
}

/// The checker itself finds what it must: a cycle through braces and `super::`.
#[test]
fn the_cycle_checker_sees_braces_and_super() {
    let me = vec!["control".to_owned(), "cluster".to_owned()];
    let refs = references(
        "use super::{persist::{self, X}, status};\nlet a = crate::routes::Table::new();",
        &me,
    );
    assert!(refs.contains(&vec!["control".into(), "persist".into()]), "{refs:?}");
    assert!(refs.contains(&vec!["control".into(), "status".into()]), "{refs:?}");
    assert!(
        refs.contains(&vec!["routes".into(), "Table".into(), "new".into()]),
        "{refs:?}"
    );
    let mut edges = BTreeMap::new();
    edges.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    edges.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycle(&edges), Some(vec!["a".into(), "b".into(), "a".into()]));
    edges.remove("b");
    assert_eq!(cycle(&edges), None);
}

/// Every file or directory ARCHITECTURE.md names in backquotes exists, so the map cannot drift
/// from the tree. A path is anything with a `/` or a file extension kedge uses; it is read from
/// the repository root, from `src/`, or from a directory the section's heading names (so
/// `conn.rs` under "`src/worker.rs` and `src/worker/`" is `src/worker/conn.rs`). Globs are not
/// checked.
#[test]
fn architecture_names_only_paths_that_exist() {
    let root = root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut section_dirs: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        let quoted = line.split('`').skip(1).step_by(2);
        if line.starts_with('#') {
            section_dirs = quoted.filter(|q| q.ends_with('/')).map(|q| root.join(q)).collect();
        }
        for q in line.split('`').skip(1).step_by(2) {
            if q.contains(char::is_whitespace) || q.contains("::") || q.contains('*') || q.starts_with('/') {
                continue;
            }
            let looks_like_path = q.ends_with('/')
                || [".rs", ".md", ".toml", ".sh", ".py", ".yaml", ".service", ".json"]
                    .iter()
                    .any(|e| q.ends_with(e));
            if !looks_like_path {
                continue;
            }
            checked += 1;
            let mut bases = vec![root.clone(), root.join("src")];
            bases.extend(section_dirs.iter().cloned());
            // A file under a sub-directory the same section named: `ingress.rs` after `translate/`.
            bases.extend(section_dirs.iter().flat_map(|d| {
                std::fs::read_dir(d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect::<Vec<_>>()
            }));
            if !bases.iter().any(|b| b.join(q).exists()) {
                missing.push(q.to_owned());
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} paths found in ARCHITECTURE.md: is the check still reading it?"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}
