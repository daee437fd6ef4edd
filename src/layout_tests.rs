//! The layout's rules, checked on the source: the rewrite side stands on nothing but
//! signing and URLs, the proxy knows nothing of how mail arrives, and no top-level module
//! imports one that imports it back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file without its comment lines (doc links name modules without importing them).
fn code_lines(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
    code.collect::<Vec<_>>().join("\n")
}

/// Top-level module of each source file under src/, and the top-level modules it names
/// through `crate::` paths.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if matches!(module.as_str(), "lib" | "main" | "cli") {
            continue;
        }
        let text = code_lines(&file);
        let used = graph.entry(module.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                used.insert(name);
            }
        }
    }
    graph
}

fn files_importing(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files = Vec::new();
    if root.is_dir() {
        sources(&root, &mut files);
    } else {
        files.push(root.with_extension("rs"));
    }
    let mut found = Vec::new();
    for file in files {
        let text = code_lines(&file);
        for name in forbidden {
            if text.contains(&format!("crate::{name}")) {
                found.push(format!("{} imports crate::{name}", file.display()));
            }
        }
    }
    found
}

#[test]
fn the_rewrite_side_stands_on_signing_and_urls_only() {
    let forbidden = [
        "config",
        "proxy",
        "delivery",
        "daemon",
        "http",
        "metrics",
        "startup",
        "pipe",
        "fsutil",
        "activation",
        "urltag",
    ];
    assert_eq!(files_importing("rewrite", &forbidden), Vec::<String>::new());
}

#[test]
fn the_proxy_side_knows_nothing_of_mail_or_config() {
    let forbidden = ["config", "delivery", "daemon", "rewrite", "startup", "pipe"];
    assert_eq!(files_importing("proxy", &forbidden), Vec::<String>::new());
}

#[test]
fn prefetch_and_api_do_not_import_the_servers() {
    let mut found = files_importing("delivery/prefetch", &["http", "proxy::routes"]);
    found.extend(files_importing("delivery/api", &["proxy", "http::serve"]));
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn no_top_level_module_imports_one_that_imports_it_back() {
    let graph = imports();
    // Depth-first search for a cycle, reporting its path.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        let cycle = visit(node, &graph, &mut Vec::new(), &mut done);
        assert_eq!(cycle, None, "import cycle between top-level modules");
    }
}
