//! Property-based inputs for the workspace-file validator and the template
//! expander: arbitrary bytes, arbitrary JSON shaped like workspace files, and
//! arbitrary strings with templates. Nothing panics; every rejection is a
//! clear error (a lowercase message, no trailing period) with a position
//! that holds (a `line:column`, a JSON pointer that resolves in the file, or
//! a byte offset at the culprit); what is accepted survives a round trip.
//!
//! 60,000 cases in all; the case counts are set per test below.

use std::sync::LazyLock;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};

use super::template::{self, TemplateError, TemplateVars};
use super::{kinds, parse, ConfigError};

static TEMPLATE_PATTERN: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(&template::pattern()).unwrap());
static DURATION_PATTERN: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(&kinds::duration_pattern()).unwrap());

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// Checks that `errors` are clear and point into `file` (when it is JSON).
fn check_errors(file: Option<&Value>, errors: &[ConfigError]) -> Result<(), TestCaseError> {
    prop_assert!(!errors.is_empty());
    for error in errors {
        let message = &error.message;
        prop_assert!(!message.is_empty() && !message.ends_with('.'), "{error:?}");
        // Lowercase, but for serde_json's own "EOF ..." and our "NUL byte ...".
        let first_word = message.split(' ').next().unwrap_or_default();
        let lowercase = !message.starts_with(char::is_uppercase);
        prop_assert!(lowercase || first_word.chars().all(|c| c.is_ascii_uppercase()), "{error:?}");
        match (error.at.as_str(), file) {
            ("", _) => {}
            (at, Some(file)) if at.starts_with('/') => {
                prop_assert!(file.pointer(at).is_some(), "{at} is not in {file}")
            }
            (at, None) => {
                let position: Vec<u64> = at.split(':').filter_map(|n| n.parse().ok()).collect();
                prop_assert!(position.len() == 2 && position.iter().all(|&n| n >= 1), "{error:?}");
            }
            (at, Some(file)) => prop_assert!(false, "{at} for a file that is JSON: {file}"),
        }
    }
    Ok(())
}

/// A string built from pieces that matter to templates.
fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9/ ._-]{1,4}",
        2 => select(vec!["$", "$$", "${", "}", "{", "${PORT}", "${WORKSPACE}", "${DATA_DIR}", "${NOPE}", "${}"])
            .prop_map(String::from),
        1 => select(vec!["\0", "é", "\n", "${PORT", "$${MCPVISOR}"]).prop_map(String::from),
    ];
    vec(piece, 0..6).prop_map(|pieces| pieces.concat())
}

/// A string built from pieces that matter to durations.
fn duration_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[0-9]{1,3}",
        3 => select(vec!["ms", "s", "m", "h", "min", "sec", "hours", "d", "w", "M", "y", "us", "µs", "ns"])
            .prop_map(String::from),
        1 => select(vec![" ", ".", "0", ".5", "x", "-", "1e3"]).prop_map(String::from),
    ];
    vec(piece, 1..6).prop_map(|pieces| pieces.concat())
}

/// Any JSON value, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("[a-zA-Z~/]{0,4}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The keys of a workspace file and how often each is present; `bogus` is
/// unknown.
const KEYS: [(&str, f64); 16] = [
    ("$schema", 0.2),
    ("description", 0.3),
    ("enabled", 0.3),
    ("command", 0.95),
    ("args", 0.5),
    ("env", 0.4),
    ("envPassthrough", 0.3),
    ("cwd", 0.3),
    ("transport", 0.3),
    ("path", 0.3),
    ("health", 0.3),
    ("restart", 0.3),
    ("circuitBreaker", 0.3),
    ("stop", 0.3),
    ("limits", 0.3),
    ("bogus", 0.05),
];

/// An object with some of `keys` (each present as often as it says), in any
/// order, each with a value from [`value_for`].
///
/// Every strategy is built here, once, not per case.
fn object_of(keys: &[(&'static str, f64)]) -> impl Strategy<Value = Value> {
    let entries: Vec<_> = keys
        .iter()
        .map(|&(key, present)| {
            proptest::option::weighted(present, value_for(key)).prop_map(move |v| v.map(|v| (key.to_string(), v)))
        })
        .collect();
    entries.prop_shuffle().prop_map(|entries| Value::Object(entries.into_iter().flatten().collect::<Map<_, _>>()))
}

/// A section of a workspace file with its `keys`, each present half the time.
fn section(keys: &[&'static str]) -> BoxedStrategy<Value> {
    let keys: Vec<_> = keys.iter().map(|&key| (key, 0.5)).collect();
    object_of(&keys).boxed()
}

/// A value for `key` of a workspace file (or of one of its sections): mostly
/// valid, sometimes nearly so, sometimes any JSON at all.
fn value_for(key: &'static str) -> BoxedStrategy<Value> {
    let text = |s: BoxedStrategy<String>| s.prop_map(Value::from).boxed();
    let one_of = |values: Vec<&'static str>| select(values).prop_map(Value::from).boxed();
    let (valid, nearly) = match key {
        "command" | "cwd" => (text(valid_template(1).boxed()), text(template_text().boxed())),
        "args" => (
            vec(valid_template(0), 0..4).prop_map(|v| json!(v)).boxed(),
            vec(template_text(), 0..4).prop_map(|v| json!(v)).boxed(),
        ),
        "env" => (
            btree_map("[A-Z_]{1,4}", valid_template(0), 0..3).prop_map(|m| json!(m)).boxed(),
            btree_map("[A-Z=_\0]{0,4}", template_text(), 0..3).prop_map(|m| json!(m)).boxed(),
        ),
        "envPassthrough" => (
            vec("[A-Z_]{1,4}", 0..3).prop_map(|v| json!(v)).boxed(),
            vec("[A-Z=_]{0,4}", 0..3).prop_map(|v| json!(v)).boxed(),
        ),
        "enabled" => (any::<bool>().prop_map(Value::from).boxed(), Just(json!("true")).boxed()),
        "transport" => (one_of(vec!["streamable-http", "sse", "stdio"]), one_of(vec!["tcp", "SSE", ""])),
        "policy" => (one_of(vec!["always", "on-failure", "never"]), one_of(vec!["sometimes", "Always"])),
        "signal" => (one_of(vec!["SIGTERM", "SIGKILL", "SIGUSR2"]), one_of(vec!["SIGWINCH", "TERM", "15"])),
        "path" => (text("/[a-z]{0,4}".boxed()), text("[a-z]{0,4}".boxed())),
        "health" => (section(&["interval", "timeout", "startupTimeout", "failureThreshold"]), section(&["bogus"])),
        "restart" => (section(&["policy", "backoffInitial", "backoffMax", "stableAfter"]), section(&["bogus"])),
        "circuitBreaker" => (section(&["failureThreshold", "openFor", "openMax"]), Just(json!([])).boxed()),
        "stop" => (section(&["signal", "grace"]), Just(json!(["SIGTERM"])).boxed()),
        "limits" => (section(&["memoryMb", "openFiles"]), Just(json!(null)).boxed()),
        "failureThreshold" | "memoryMb" | "openFiles" => (
            (1u64..10).prop_map(Value::from).boxed(),
            prop_oneof![Just(0u64), Just(u64::from(u32::MAX) + 1)].prop_map(Value::from).boxed(),
        ),
        "interval" | "timeout" | "startupTimeout" | "backoffInitial" | "backoffMax" | "stableAfter" | "openFor"
        | "openMax" | "grace" => (text("[1-9][0-9]{0,2} ?(ms|s|m|h|min)".boxed()), text(duration_text().boxed())),
        _ => (text("\\PC{0,12}".boxed()), Just(json!(1)).boxed()),
    };
    prop_oneof![12 => valid, 2 => nearly, 1 => any_json()].boxed()
}

/// A string with templates that expands: at least `min` pieces.
fn valid_template(min: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => "[a-zA-Z0-9/ ._-]{1,4}",
        1 => select(vec!["$$", "${PORT}", "${WORKSPACE}", "${MCPVISOR}", "$x", "é"]).prop_map(String::from),
    ];
    vec(piece, min..4).prop_map(|pieces| pieces.concat())
}

fn vars() -> TemplateVars {
    TemplateVars {
        port: 41000,
        workspace: "dev".into(),
        data_dir: "/s/dev".into(),
        workspaces_dir: "/w".into(),
        mcpvisor: "/bin/m".into(),
    }
}

proptest! {
    #![proptest_config(config(30_000))]

    /// Any bytes: a config, or clear errors (mostly a syntax error with its
    /// line:column).
    #[test]
    fn arbitrary_bytes(bytes in prop_oneof![
        vec(any::<u8>(), 0..64),
        vec(select(b"{}[]\":,01 \\nabctrue".to_vec()), 0..64),
    ]) {
        match parse(&bytes) {
            Ok(config) => prop_assert_eq!(parse(&serde_json::to_vec(&config).unwrap()).unwrap(), config),
            Err(errors) => check_errors(serde_json::from_slice(&bytes).ok().as_ref(), &errors)?,
        }
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    /// JSON shaped like a workspace file: every error points at a place in
    /// the file, and what is accepted reads back the same after writing.
    #[test]
    fn workspace_shaped_files(file in object_of(&KEYS)) {
        match parse(file.to_string().as_bytes()) {
            Ok(config) => prop_assert_eq!(parse(&serde_json::to_vec(&config).unwrap()).unwrap(), config),
            Err(errors) => check_errors(Some(&file), &errors)?,
        }
    }
}

proptest! {
    #![proptest_config(config(10_000))]

    /// The expander: the same verdict with and without values, and an error
    /// at the byte that causes it.
    #[test]
    fn template_errors_point_at_their_cause(text in template_text()) {
        let expanded = template::expand(&text, Some(&vars()));
        prop_assert_eq!(expanded.is_ok(), template::check(&text).is_ok());
        match expanded {
            Ok(out) if !text.contains('$') => prop_assert_eq!(out, text),
            Ok(out) => prop_assert!(!out.contains('\0')),
            Err(TemplateError::Nul { at }) => prop_assert_eq!(text.as_bytes()[at], 0),
            Err(TemplateError::Unterminated { at }) => {
                prop_assert!(text[at..].starts_with("${") && !text[at..].contains('}'), "{:?}", text)
            }
            Err(TemplateError::Unknown { name, at }) => {
                let template = format!("${{{name}}}");
                prop_assert!(text[at..].starts_with(&template), "{:?}", text);
                prop_assert!(!template::NAMES.contains(&name.as_str()));
            }
        }
    }

    /// The schema's template pattern takes exactly what the expander takes.
    #[test]
    fn template_pattern_agrees_with_the_expander(text in template_text()) {
        prop_assert_eq!(TEMPLATE_PATTERN.is_match(&text), template::check(&text).is_ok(), "{:?}", text);
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    /// What the schema's duration pattern takes, humantime parses (or finds
    /// too large, which serde then reports).
    #[test]
    fn duration_pattern_takes_only_durations(text in duration_text()) {
        if DURATION_PATTERN.is_match(&text) {
            let parsed = humantime::parse_duration(&text);
            prop_assert!(
                matches!(parsed, Ok(_) | Err(humantime::DurationError::NumberOverflow)),
                "{:?}: {:?}", text, parsed
            );
        }
    }
}
