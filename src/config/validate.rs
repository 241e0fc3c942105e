//! Reading and validating workspace files (DESIGN §3).
//!
//! Validation never stops at the first problem: it walks the JSON against a
//! small schema and reports each error with a JSON pointer (or line:column
//! for a syntax error), so a user fixes a file in one round.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::template;
use super::types::WorkspaceConfig;

/// Files over this size (1 MiB) are invalid.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// One problem in a workspace file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// A JSON pointer (`/health/interval`), `line:column` for syntax errors, or
    /// empty when it concerns the whole file.
    pub at: String,
    /// Lowercase, no trailing period.
    pub message: String,
}

/// Every problem of one workspace file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileError {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.at.as_str() {
                "" => write!(f, "{}: {}", self.file.display(), e.message)?,
                at if at.starts_with('/') => write!(f, "{}: {}: {}", self.file.display(), at, e.message)?,
                at => write!(f, "{}:{}: {}", self.file.display(), at, e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for FileError {}

/// A workspace file as read from disk: its name and either a config or its errors.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    /// The file stem; the workspace name when it is valid.
    pub name: String,
    pub path: PathBuf,
    pub config: Result<Arc<WorkspaceConfig>, FileError>,
    /// `sha256:<hex>` of the parsed config, stable across formatting changes.
    pub version: Option<String>,
    /// The file's modification time, when known.
    pub modified: Option<std::time::SystemTime>,
}

/// Whether `name` matches `^[a-z0-9][a-z0-9_-]{0,62}$`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let ok =
        |b: &u8, first: bool| b.is_ascii_lowercase() || b.is_ascii_digit() || (!first && (*b == b'_' || *b == b'-'));
    (1..=63).contains(&bytes.len()) && ok(&bytes[0], true) && bytes[1..].iter().all(|b| ok(b, false))
}

/// Whether a directory entry is a candidate workspace file: `*.json`, not a dotfile.
///
/// Editor swap and backup files (`.dev.json.swp`, `dev.json~`) fall out here.
pub fn is_workspace_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".json") && name.len() > ".json".len()
}

/// Reads every workspace file in `dir`, sorted by name.
///
/// # Errors
/// Reading the directory itself failed (missing, not a directory, no permission).
pub fn load_dir(dir: &Path) -> std::io::Result<Vec<LoadedFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_workspace_file(&path) && path.is_file() {
            files.push(load_file(&path));
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Reads and validates one workspace file; never fails, errors are in the result.
pub fn load_file(path: &Path) -> LoadedFile {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    let fail = |errors: Vec<ConfigError>| LoadedFile {
        name: name.clone(),
        path: path.to_path_buf(),
        config: Err(FileError { file: path.to_path_buf(), errors }),
        version: None,
        modified: None,
    };
    let whole = |message: String| vec![ConfigError { at: String::new(), message }];
    let modified = match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_FILE_BYTES => {
            return fail(whole(format!("file is {} bytes, over the 1 MiB limit", meta.len())))
        }
        Ok(meta) => meta.modified().ok(),
        Err(e) => return fail(whole(format!("reading file: {e}"))),
    };
    let fail = |errors| LoadedFile { modified, ..fail(errors) };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) => return fail(whole(format!("reading file: {e}"))),
    };
    let mut errors = Vec::new();
    if !is_valid_name(&name) {
        errors.push(ConfigError {
            at: String::new(),
            message: format!("workspace name {name:?} (the file stem) must match ^[a-z0-9][a-z0-9_-]{{0,62}}$"),
        });
    }
    match parse(&text) {
        Ok(config) => {
            if !errors.is_empty() {
                return fail(errors);
            }
            let version = version_of(&config);
            LoadedFile {
                name,
                path: path.to_path_buf(),
                config: Ok(Arc::new(config)),
                version: Some(version),
                modified,
            }
        }
        Err(mut more) => {
            errors.append(&mut more);
            fail(errors)
        }
    }
}

/// Parses and validates the bytes of a workspace file.
///
/// # Errors
/// Every problem found, in document order.
pub fn parse(text: &[u8]) -> Result<WorkspaceConfig, Vec<ConfigError>> {
    let value: Value = serde_json::from_slice(text).map_err(|e| {
        vec![ConfigError {
            at: format!("{}:{}", e.line(), e.column()),
            message: lowercase_first(
                &e.to_string().replace(&format!(" at line {} column {}", e.line(), e.column()), ""),
            ),
        }]
    })?;
    let mut errors = Vec::new();
    check(&value, &Kind::Obj(TOP), "", &mut errors);
    if let Some(obj) = value.as_object() {
        if !obj.contains_key("command") {
            errors.push(err("/command", "missing required key \"command\""));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    serde_json::from_value(value).map_err(|e| vec![err("", &lowercase_first(&e.to_string()))])
}

fn version_of(config: &WorkspaceConfig) -> String {
    let canonical = serde_json::to_vec(config).expect("config serializes");
    let digest = Sha256::digest(&canonical);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The shape of a value in a workspace file.
enum Kind {
    Str,
    /// A string in which `${...}` templates are checked.
    Template,
    NonEmptyTemplate,
    Path,
    Bool,
    TemplateList,
    TemplateMap,
    NameList,
    Duration,
    Count,
    OneOf(&'static [&'static str]),
    Signal,
    Obj(&'static [(&'static str, Kind)]),
}

const TOP: &[(&str, Kind)] = &[
    ("description", Kind::Str),
    ("enabled", Kind::Bool),
    ("command", Kind::NonEmptyTemplate),
    ("args", Kind::TemplateList),
    ("env", Kind::TemplateMap),
    ("envPassthrough", Kind::NameList),
    ("cwd", Kind::NonEmptyTemplate),
    ("transport", Kind::OneOf(&["streamable-http", "sse", "stdio"])),
    ("path", Kind::Path),
    (
        "health",
        Kind::Obj(&[
            ("interval", Kind::Duration),
            ("timeout", Kind::Duration),
            ("startupTimeout", Kind::Duration),
            ("failureThreshold", Kind::Count),
        ]),
    ),
    (
        "restart",
        Kind::Obj(&[
            ("policy", Kind::OneOf(&["always", "on-failure", "never"])),
            ("backoffInitial", Kind::Duration),
            ("backoffMax", Kind::Duration),
            ("stableAfter", Kind::Duration),
        ]),
    ),
    (
        "circuitBreaker",
        Kind::Obj(&[("failureThreshold", Kind::Count), ("openFor", Kind::Duration), ("openMax", Kind::Duration)]),
    ),
    ("stop", Kind::Obj(&[("signal", Kind::Signal), ("grace", Kind::Duration)])),
    ("limits", Kind::Obj(&[("memoryMb", Kind::Count), ("openFiles", Kind::Count)])),
];

fn err(at: &str, message: &str) -> ConfigError {
    ConfigError { at: at.to_string(), message: message.to_string() }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
fn pointer(at: &str, key: &str) -> String {
    format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"))
}

fn check_template(value: &str, at: &str, errors: &mut Vec<ConfigError>) {
    if let Err(e) = template::expand(value, None) {
        errors.push(err(at, &e.to_string()));
    }
}

fn check(value: &Value, kind: &Kind, at: &str, errors: &mut Vec<ConfigError>) {
    let mut expect = |what: &str| errors.push(err(at, &format!("expected {what}, found {}", type_name(value))));
    match kind {
        Kind::Str => {
            if !value.is_string() {
                expect("a string");
            }
        }
        Kind::Template | Kind::NonEmptyTemplate => match value.as_str() {
            None => expect("a string"),
            Some("") if matches!(kind, Kind::NonEmptyTemplate) => errors.push(err(at, "must not be empty")),
            Some(s) => check_template(s, at, errors),
        },
        Kind::Path => match value.as_str() {
            None => expect("a string"),
            Some(s) if !s.starts_with('/') => errors.push(err(at, "must start with \"/\"")),
            Some(_) => {}
        },
        Kind::Bool => {
            if !value.is_boolean() {
                expect("true or false");
            }
        }
        Kind::TemplateList => match value.as_array() {
            None => expect("an array of strings"),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check(item, &Kind::Template, &format!("{at}/{i}"), errors);
                }
            }
        },
        Kind::NameList => match value.as_array() {
            None => expect("an array of environment variable names"),
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{at}/{i}");
                    match item.as_str() {
                        Some(name) if is_env_name(name) => {}
                        Some(name) => errors.push(err(&at, &format!("{name:?} is not an environment variable name"))),
                        None => errors.push(err(&at, &format!("expected a string, found {}", type_name(item)))),
                    }
                }
            }
        },
        Kind::TemplateMap => match value.as_object() {
            None => expect("an object of strings"),
            Some(map) => {
                for (key, item) in map {
                    let at = pointer(at, key);
                    if !is_env_name(key) {
                        errors.push(err(&at, &format!("{key:?} is not an environment variable name")));
                    }
                    check(item, &Kind::Template, &at, errors);
                }
            }
        },
        Kind::Duration => match value.as_str() {
            None => expect("a duration string like \"500ms\" or \"10s\""),
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d > Duration::ZERO => {}
                Ok(_) => errors.push(err(at, "duration must be greater than zero")),
                Err(e) => errors.push(err(at, &format!("invalid duration {s:?}: {e}"))),
            },
        },
        Kind::Count => match value.as_u64() {
            Some(n) if n >= 1 && n <= u32::MAX as u64 => {}
            _ => expect("a whole number of at least 1"),
        },
        Kind::OneOf(options) => match value.as_str() {
            Some(s) if options.contains(&s) => {}
            _ => expect(&format!("one of {}", options.join(", "))),
        },
        Kind::Signal => match value.as_str() {
            Some(s) if s.parse::<nix::sys::signal::Signal>().is_ok() => {}
            _ => expect("a signal name like \"SIGTERM\""),
        },
        Kind::Obj(fields) => match value.as_object() {
            None => expect("an object"),
            Some(map) => {
                for (key, item) in map {
                    let at = pointer(at, key);
                    match fields.iter().find(|(name, _)| name == key) {
                        Some((_, kind)) => check(item, kind, &at, errors),
                        None => {
                            let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                            errors.push(err(&at, &format!("unknown key {key:?} (known: {})", known.join(", "))));
                        }
                    }
                }
            }
        },
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("dev"));
        assert!(is_valid_name("a_b-9"));
        assert!(!is_valid_name("Dev"));
        assert!(!is_valid_name("-x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(64)));
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(br#"{"command":"python3"}"#).unwrap();
        assert!(c.enabled);
        assert_eq!(c.endpoint_path(), "/mcp");
        assert_eq!(c.restart.backoff_initial, Duration::from_millis(500));
        assert_eq!(c.env_passthrough.len(), 7);
    }

    #[test]
    fn partial_nested_object_keeps_other_defaults() {
        let c = parse(br#"{"command":"x","health":{"interval":"1s"},"transport":"sse"}"#).unwrap();
        assert_eq!(c.health.interval, Duration::from_secs(1));
        assert_eq!(c.health.failure_threshold, 3);
        assert_eq!(c.endpoint_path(), "/sse");
    }

    #[test]
    fn collects_every_error_with_pointers() {
        let errors =
            parse(br#"{"commnd":"x","args":[1,"${NOPE}"],"health":{"interval":"5x","bogus":1},"transport":"tcp"}"#)
                .unwrap_err();
        let at: Vec<&str> = errors.iter().map(|e| e.at.as_str()).collect();
        assert_eq!(
            at,
            ["/commnd", "/args/0", "/args/1", "/health/interval", "/health/bogus", "/transport", "/command"]
        );
        assert!(errors.iter().all(|e| e.message.chars().next().unwrap().is_lowercase()));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errors = parse(b"{\n  \"command\": \"x\",\n  oops\n}").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].at, "3:3");
    }

    #[test]
    fn swap_and_backup_files_are_ignored() {
        assert!(is_workspace_file(Path::new("w/dev.json")));
        assert!(!is_workspace_file(Path::new("w/.dev.json.swp")));
        assert!(!is_workspace_file(Path::new("w/dev.json~")));
        assert!(!is_workspace_file(Path::new("w/.json")));
    }

    #[test]
    fn version_ignores_formatting() {
        let a = version_of(&parse(br#"{"command":"x"}"#).unwrap());
        let b = version_of(&parse(b"{\n \"command\" : \"x\"\n}").unwrap());
        assert_eq!(a, b);
        assert!(a.starts_with("sha256:"));
    }
}
