//! The layers of the crate depend on each other one way only.
//!
//! Each rule names a top-level module of `src/` and what its files may or
//! may not reach through `crate::` paths (in `use` lines and inline paths).
//! ARCHITECTURE.md states the same rules as invariants; change both together.
//! The standard library and external crates are always allowed.

use std::path::{Path, PathBuf};

/// What a module may reach inside the crate.
enum Rule {
    /// Every module but these.
    Forbid(&'static [&'static str]),
    /// Only these modules.
    Only(&'static [&'static str]),
}

/// The layering rules, by top-level module.
///
/// - `process/` runs children; it knows nothing of who supervises them or
///   who serves them over HTTP.
/// - `state/` holds what readers see; it knows nothing of who writes it,
///   who serves it, or how children run.
/// - `config/` parses and validates workspace files; it knows nothing of
///   what is done with them.
/// - `metrics` renders what `state/` holds.
/// - `resources` (the sampler) measures `process/` trees into `state/`.
/// - `bridge` (the stdio bridge) multiplexes `process/` pipes; it knows
///   nothing of who supervises the child or who serves its sessions.
/// - `lock` stands alone, and so does `sse` (the one SSE encoder and parser).
/// - `history` (the git-backed config history) knows only `state/` (for
///   timestamps) and `config/` (workspace names): it stores bytes and never
///   applies anything.
/// - `doctor` (the system check) holds beliefs against `/proc` and files; it
///   is handed the beliefs and knows nothing of who holds them.
const RULES: &[(&str, Rule)] = &[
    ("process", Rule::Forbid(&["supervisor", "http", "bridge"])),
    ("bridge", Rule::Forbid(&["supervisor", "http"])),
    ("state", Rule::Forbid(&["supervisor", "http", "process"])),
    ("config", Rule::Forbid(&["supervisor", "http", "process"])),
    ("metrics", Rule::Only(&["state"])),
    ("resources", Rule::Only(&["state", "process"])),
    ("lock", Rule::Only(&[])),
    ("sse", Rule::Only(&[])),
    ("history", Rule::Only(&["state", "config"])),
    ("doctor", Rule::Forbid(&["supervisor", "http"])),
];

/// The top-level modules a line of Rust reaches through `crate::` paths,
/// including each name of a `crate::{a, b::c}` group. Comment lines are
/// skipped.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `mycrate::x` is another crate's path.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            out.extend(inner.split(',').filter_map(|item| ident(item.trim())));
        } else if let Some(name) = ident(rest) {
            out.push(name);
        }
    }
    out
}

fn ident(text: &str) -> Option<String> {
    let name: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!name.is_empty()).then_some(name)
}

/// The top-level module a file under `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every use that breaks a rule, as `file:line: module uses crate::target`.
fn violations(module: &str, file: &str, text: &str) -> Vec<String> {
    let Some((_, rule)) = RULES.iter().find(|(name, _)| *name == module) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for target in crate_paths(line) {
            let allowed = target == module
                || match rule {
                    Rule::Forbid(forbidden) => !forbidden.contains(&target.as_str()),
                    Rule::Only(only) => only.contains(&target.as_str()),
                };
            if !allowed {
                out.push(format!("{file}:{}: {module} uses crate::{target}", n + 1));
            }
        }
    }
    out
}

#[test]
fn every_module_keeps_to_its_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let module = module_of(&src, file);
        broken.extend(violations(&module, &file.strip_prefix(&src).unwrap().display().to_string(), &text));
    }
    assert!(broken.is_empty(), "layering rules broken (see tests/layering.rs):\n{}", broken.join("\n"));
    for (module, _) in RULES {
        assert!(
            files.iter().any(|f| module_of(&src, f) == *module),
            "rule for {module:?}, which is no module of src/ any more"
        );
    }
}

#[test]
fn the_checker_sees_uses_groups_and_inline_paths() {
    let text = "use crate::supervisor::Registry;\n\
                use crate::{state::Timestamp, http};\n\
                // use crate::http::router; (a comment)\n\
                let m = crate::metrics::Metrics::new;\n\
                use mycrate::http;\n";
    assert_eq!(crate_paths("use crate::{state::Timestamp, http};"), ["state", "http"]);
    assert_eq!(
        violations("process", "process/x.rs", text),
        ["process/x.rs:1: process uses crate::supervisor", "process/x.rs:2: process uses crate::http"]
    );
    assert_eq!(
        violations("metrics", "metrics.rs", text),
        [
            "metrics.rs:1: metrics uses crate::supervisor",
            "metrics.rs:2: metrics uses crate::http",
            // Its own module is always allowed.
        ]
    );
    assert!(violations("supervisor", "supervisor/mod.rs", text).is_empty(), "no rule, no violation");
}
