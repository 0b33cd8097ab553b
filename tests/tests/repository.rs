//! Properties of the repository itself: every `ARCHITECTURE §N` reference names a section of
//! docs/ARCHITECTURE.md, and `gateway-core`'s modules depend on each other without cycles.

#![allow(clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// Every file under `dir` (recursively) whose name ends with one of `extensions`, skipping
/// build output and virtualenvs.
fn files(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                files(&path, extensions, out);
            }
        } else if extensions.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

#[test]
fn every_architecture_reference_names_a_section() {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md exists");
    let sections: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("## ") || l.starts_with("### "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches('.').to_owned())
        .filter(|n| n.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect();
    assert!(
        sections.contains("2.1") && sections.contains("3.5"),
        "{sections:?}"
    );

    let mut paths = Vec::new();
    files(
        &root(),
        &[".rs", ".md", ".yaml", ".json", ".toml"],
        &mut paths,
    );
    let mut references = 0;
    let mut dangling = Vec::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text.contains("DESIGN §") && !path.ends_with("repository.rs") {
            dangling.push(format!("{}: a DESIGN § reference", path.display()));
        }
        for (at, _) in text.match_indices("ARCHITECTURE §") {
            let number: String = text[at + "ARCHITECTURE §".len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let number = number.trim_end_matches('.');
            if number.is_empty() {
                // Prose about the form of a reference ("`ARCHITECTURE §N`").
                continue;
            }
            references += 1;
            if !sections.contains(number) {
                dangling.push(format!("{}: §{number}", path.display()));
            }
        }
    }
    assert!(references > 20, "found only {references} references");
    assert!(
        dangling.is_empty(),
        "references to sections docs/ARCHITECTURE.md does not have: {dangling:#?}"
    );
}

/// `gateway-core`'s module paths (`config::validate`, `breaker`, …) by source file.
fn core_modules() -> BTreeMap<String, String> {
    let src = root().join("shared/src");
    let mut paths = Vec::new();
    files(&src, &[".rs"], &mut paths);
    let mut modules = BTreeMap::new();
    for path in paths {
        let relative = path
            .strip_prefix(&src)
            .expect("under shared/src")
            .with_extension("");
        let mut parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
            parts.pop();
        }
        // Test modules may reach anywhere.
        if parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        modules.insert(parts.join("::"), code_without_tests(&text));
    }
    modules
}

/// The code of a source file without comments and without its `#[cfg(test)] mod tests { … }`
/// block (which conventionally ends the file).
fn code_without_tests(text: &str) -> String {
    let mut code = String::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .get(i + 1)
                .is_some_and(|next| next.trim_start().starts_with("mod ") && next.ends_with('{'))
        {
            break;
        }
        if !trimmed.starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

/// The modules `code` (of module `module`) names through `crate::…` and `super::…` paths
/// (`crate::a::{b, c::D}` names `a::b` and `a::c`), each resolved to the longest known module
/// path; its own ancestors and descendants are not dependencies.
fn dependencies(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            if code[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            let mut base: Vec<&str> = Vec::new();
            if start == "super::" {
                base = module.split("::").collect();
                base.pop();
            }
            // The identifiers of the path, then an optional `{…}` group.
            let mut rest = &code[at + start.len()..];
            let mut idents: Vec<&str> = Vec::new();
            let mut group = "";
            loop {
                if let Some(inner) = rest.strip_prefix('{') {
                    group = &inner[..inner.find('}').unwrap_or(inner.len())];
                    break;
                }
                let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
                if len == 0 {
                    break;
                }
                match &rest[..len] {
                    "super" if idents.is_empty() => {
                        base.pop();
                    }
                    ident => idents.push(ident),
                }
                match rest[len..].strip_prefix("::") {
                    Some(next) => rest = next,
                    None => break,
                }
            }
            let mut candidates = vec![idents.clone()];
            for item in group.split(',') {
                let first = item.trim().split("::").next().unwrap_or_default();
                if !first.is_empty() && first != "self" {
                    let mut path = idents.clone();
                    path.push(first);
                    candidates.push(path);
                }
            }
            for candidate in candidates {
                let mut parts: Vec<&str> = base.clone();
                let mut best = None;
                for segment in candidate {
                    parts.push(segment);
                    let joined = parts.join("::");
                    if known.contains(&joined) {
                        best = Some(joined);
                    }
                }
                let Some(target) = best else { continue };
                let related = target == module
                    || module.starts_with(&format!("{target}::"))
                    || target.starts_with(&format!("{module}::"));
                if !related {
                    out.insert(target);
                }
            }
        }
    }
    out
}

/// A cycle in `edges`, if there is one (depth-first search).
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(node, edges, &mut state, &mut stack) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn core_modules_depend_on_each_other_without_cycles() {
    let modules = core_modules();
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    assert!(known.contains("breaker") && known.contains("config::validate"));
    let edges: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, code)| (m.clone(), dependencies(m, code, &known)))
        .collect();
    // The detector sees a real dependency: the pipeline uses the limiter.
    assert!(edges["pipeline::run"].contains("limiter") || edges["pipeline"].contains("limiter"));
    if let Some(cycle) = find_cycle(&edges) {
        panic!("module cycle: {}", cycle.join(" → "));
    }
    // Between top-level modules too (`config` → `mandrill` → `events` → `config` is a cycle
    // even when no two files name each other).
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in &edges {
        let a = from.split("::").next().unwrap_or_default().to_owned();
        for to in targets {
            let b = to.split("::").next().unwrap_or_default().to_owned();
            if a != b {
                top.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    if let Some(cycle) = find_cycle(&top) {
        panic!("cycle between top-level modules: {}", cycle.join(" → "));
    }
}
