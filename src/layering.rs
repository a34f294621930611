//! Checks the crate's shape from its source: the top-level modules import each other without a
//! cycle (data flows one way, config → runtime → connections, and the admin API reads the app,
//! never the reverse), and every file opens with a doc comment naming its job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to (`pool` for src/pool/machine/mod.rs).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let first = file.strip_prefix(src).ok()?.components().next()?;
    let name = first.as_os_str().to_str()?;
    Some(name.trim_end_matches(".rs").to_string())
}

/// `crate::name` references outside comments: the modules `text` uses.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The top-level module graph of the crate in `src`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(top) = top_module(src, &file) else {
            continue;
        };
        if top == "main" || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let entry = deps.entry(top.clone()).or_default();
        entry.extend(uses(&text).into_iter().filter(|m| *m != top));
    }
    deps
}

/// A cycle through `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn top_level_modules_import_each_other_without_a_cycle() {
        let graph = graph(&src());
        assert!(
            graph.get("admin").is_some_and(|d| d.contains("app")),
            "the source was not read: {graph:?}"
        );
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "import cycle: {}\nthe graph: {graph:#?}",
                cycle.join(" -> ")
            );
        }
    }

    #[test]
    fn the_cycle_finder_finds_one() {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        assert_eq!(find_cycle(&g), None);
        g.entry("c".into()).or_default().insert("a".into());
        assert_eq!(
            find_cycle(&g),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
    }

    #[test]
    fn comments_and_doc_links_do_not_count_as_imports() {
        let text = "use crate::pool::Pool; // crate::admin\n/// see [`crate::server`]\n";
        assert_eq!(uses(text), BTreeSet::from(["pool".to_string()]));
    }

    #[test]
    fn every_file_opens_with_a_doc_comment_naming_its_job() {
        let mut files = Vec::new();
        rust_files(&src(), &mut files);
        assert!(files.len() > 20, "the source was not read: {files:?}");
        let undocumented: Vec<_> = files
            .iter()
            .filter(|f| {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                !text.starts_with("//!")
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "files without a `//!` doc comment: {undocumented:?}"
        );
    }
}
