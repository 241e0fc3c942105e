//! Reading and validating workspace files (docs/reference.md §3).
//!
//! Validation never stops at the first problem, so a user fixes a file in
//! one round, and it has no rules of its own: the config types are the only
//! description of a file (see `types` and `kinds`). The file is parsed into a
//! JSON value (a syntax error ends it there, with its `line:column`), then
//! serde deserializes that value into [`WorkspaceConfig`] through
//! `serde_path_to_error` (reading structs from objects only, see `strict`). Each error is kept with the JSON pointer of where it
//! happened and cut out of the value (the key or array item removed, so a
//! default stands in), and serde runs again, until the value deserializes or
//! an error has nothing left to cut (a missing `command`). The messages are
//! serde's own ("unknown field `comand`, expected one of ...", "invalid type:
//! integer `1`, expected a string") or the kinds' rules ("unknown template
//! ${NOPE} ...", "duration must be greater than zero"), in document order.
//!
//! Why not a JSON Schema validator over `schema/workspace.schema.json`
//! (the `jsonschema` crate): it would be a second reader of the file whose
//! idea of a duration or a template could differ from the code that builds
//! the typed config, its messages are not serde's, and it brings some 70
//! crates. The schema serves editors; `tests/config_errors.rs` checks that
//! it agrees with this validator on the shipped files and on broken ones.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_path_to_error::Segment;
use sha2::{Digest, Sha256};

use super::strict::Strict;
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

/// One line per error: `file: pointer: message`, or `file:line:column:
/// message`. Control characters of the file name and the messages (which
/// quote keys of the file) are escaped, so no line can be forged in a log.
impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = escape_controls(&self.file.to_string_lossy()).into_owned();
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let message = escape_controls(&e.message);
            match e.at.as_str() {
                "" => write!(f, "{file}: {message}")?,
                at if at.starts_with('/') => write!(f, "{file}: {}: {message}", escape_controls(at))?,
                at => write!(f, "{file}:{at}: {message}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for FileError {}

/// `text` with its control characters (newlines, escape sequences) written
/// as Rust escapes, and everything else as it is.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.contains(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect(),
    )
}

/// A workspace file, or the workspaces folder, that could not be read.
///
/// It says nothing about the file's content: too many open files, a folder
/// without permission or a file replaced while it was read all pass. The
/// daemon retries on its next scan and keeps what it had.
#[derive(Debug, thiserror::Error)]
#[error("reading {}: {source}", escape_controls(&path.to_string_lossy()))]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl ReadError {
    fn new(path: &Path) -> impl FnOnce(std::io::Error) -> ReadError + '_ {
        move |source| ReadError { path: path.to_path_buf(), source }
    }
}

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
    /// The bytes as read, for the config history (empty when unread).
    pub text: Arc<[u8]>,
}

/// What one scan of the workspaces folder found, sorted by name.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files read, valid or not.
    pub files: Vec<LoadedFile>,
    /// Files listed but not read this time.
    pub unreadable: Vec<ReadError>,
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

/// The workspace name a file stands for: its stem.
pub fn name_of(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Reads every workspace file in `dir`.
///
/// A file that cannot be read lands in [`Scan::unreadable`], not among the
/// invalid files; entries that are not regular files are skipped.
///
/// # Errors
/// Listing the folder failed (missing, not a directory, no permission, too
/// many open files).
pub fn scan_dir(dir: &Path) -> Result<Scan, ReadError> {
    let mut scan = Scan::default();
    for entry in std::fs::read_dir(dir).map_err(ReadError::new(dir))? {
        let path = entry.map_err(ReadError::new(dir))?.path();
        if !is_workspace_file(&path) {
            continue;
        }
        match read_file(&path) {
            Ok(Some(file)) => scan.files.push(file),
            Ok(None) => {}
            Err(error) => scan.unreadable.push(error),
        }
    }
    scan.files.sort_by(|a, b| a.name.cmp(&b.name));
    scan.unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(scan)
}

/// Reads and validates one workspace file; `None` when it is not a regular
/// file (a folder, a socket, a FIFO).
///
/// # Errors
/// The file could not be read; its content is not judged.
pub fn read_file(path: &Path) -> Result<Option<LoadedFile>, ReadError> {
    read_file_with(path, |path| std::fs::File::open(path))
}

/// [`read_file`], opening the file with `open` (tests inject errors here).
fn read_file_with(
    path: &Path,
    open: impl FnOnce(&Path) -> std::io::Result<std::fs::File>,
) -> Result<Option<LoadedFile>, ReadError> {
    use std::io::Read;
    // A FIFO would block the open: look before opening.
    if !std::fs::metadata(path).map_err(ReadError::new(path))?.is_file() {
        return Ok(None);
    }
    let file = open(path).map_err(ReadError::new(path))?;
    let meta = file.metadata().map_err(ReadError::new(path))?;
    let mut text = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut text).map_err(ReadError::new(path))?;
    Ok(Some(judge(path, &text, meta.modified().ok())))
}

/// Reads and validates one workspace file; never fails: a file that cannot
/// be read is an invalid one here (what `mcpvisor validate` reports).
pub fn load_file(path: &Path) -> LoadedFile {
    let whole = |message: String| LoadedFile {
        name: name_of(path),
        path: path.to_path_buf(),
        config: Err(FileError { file: path.to_path_buf(), errors: vec![ConfigError { at: String::new(), message }] }),
        version: None,
        modified: None,
        text: Arc::from(&[][..]),
    };
    match read_file(path) {
        Ok(Some(file)) => file,
        Ok(None) => whole("not a regular file".into()),
        Err(error) => whole(format!("reading file: {}", error.source)),
    }
}

/// Reads every workspace file in `dir` as [`load_file`] does, sorted by name.
///
/// # Errors
/// Listing the folder failed.
pub fn load_dir(dir: &Path) -> std::io::Result<Vec<LoadedFile>> {
    let scan = scan_dir(dir).map_err(|error| error.source)?;
    let mut files = scan.files;
    files.extend(scan.unreadable.iter().map(|error| load_file(&error.path)));
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Validates `text` as the content of the workspace file at `path` (its
/// name, its size, its content) without reading or writing the file: what
/// an API write checks before it writes.
pub fn judge_bytes(path: &Path, text: &[u8]) -> LoadedFile {
    judge(path, text, None)
}

/// Validates the bytes of the file at `path`: its name, its size, its content.
fn judge(path: &Path, text: &[u8], modified: Option<std::time::SystemTime>) -> LoadedFile {
    let name = name_of(path);
    let mut errors = Vec::new();
    if !is_valid_name(&name) {
        errors.push(ConfigError {
            at: String::new(),
            message: format!("workspace name {name:?} (the file stem) must match ^[a-z0-9][a-z0-9_-]{{0,62}}$"),
        });
    }
    let parsed = match text.len() as u64 > MAX_FILE_BYTES {
        true => Err(vec![ConfigError { at: String::new(), message: "file is over the 1 MiB limit".into() }]),
        false => parse(text),
    };
    let (config, version) = match parsed {
        Ok(config) if errors.is_empty() => {
            let version = version_of(&config);
            (Ok(Arc::new(config)), Some(version))
        }
        Ok(_) => (Err(errors), None),
        Err(more) => {
            errors.extend(more);
            (Err(errors), None)
        }
    };
    let config = config.map_err(|errors| FileError { file: path.to_path_buf(), errors });
    LoadedFile { name, path: path.to_path_buf(), config, version, modified, text: Arc::from(text) }
}

/// At most this many errors are reported for one file.
const MAX_ERRORS: usize = 100;

/// Parses and validates the bytes of a workspace file.
///
/// A top-level `"$schema"` key (any string) is for editors and ignored.
///
/// # Errors
/// Every problem found, in document order: a syntax error alone, with its
/// `line:column`; otherwise each error with its JSON pointer.
pub fn parse(text: &[u8]) -> Result<WorkspaceConfig, Vec<ConfigError>> {
    let mut value: Value = serde_json::from_slice(text).map_err(|e| vec![syntax_error(&e)])?;
    let mut errors = Vec::new();
    if let Some(schema) = value.as_object_mut().and_then(|file| file.shift_remove("$schema")) {
        if let Err(e) = String::deserialize(&schema) {
            errors.push(ConfigError { at: "/$schema".into(), message: e.to_string() });
        }
    }
    let mut cuts = Cuts::default();
    loop {
        let error = match serde_path_to_error::deserialize::<_, WorkspaceConfig>(Strict(&value)) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => break,
            Err(error) => error,
        };
        let path: Vec<Segment> = error.path().iter().cloned().collect();
        let message = error.into_inner().to_string();
        if cuts.made_missing(&path, &message) {
            break;
        }
        if errors.len() == MAX_ERRORS {
            errors
                .push(ConfigError { at: String::new(), message: format!("more errors after the first {MAX_ERRORS}") });
            break;
        }
        errors.push(ConfigError { at: cuts.pointer(&path), message });
        if !cuts.cut(&mut value, &path) {
            break;
        }
    }
    Err(errors)
}

/// A syntax error at its `line:column`, with serde_json's message.
///
/// serde_json says column 0 for the end of input right after a newline (or
/// of an empty file); editors count from 1, so that is column 1.
fn syntax_error(error: &serde_json::Error) -> ConfigError {
    let at = format!("{}:{}", error.line(), error.column().max(1));
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = message.strip_suffix(&suffix).map_or(message.clone(), str::to_string);
    ConfigError { at, message }
}

/// The parts cut out of a file's JSON value so serde can go on to the next
/// error, and how to point into the file as it was.
///
/// An object key is removed (its default applies); an array item is removed
/// and remembered, so the indices of later errors in that array still name
/// the items of the file.
#[derive(Default)]
struct Cuts {
    /// By the pointer of an array in the file: the file's indices removed from it, ascending.
    items: HashMap<String, Vec<usize>>,
    /// (pointer of the object in the file, key) of every removed key.
    keys: Vec<(String, String)>,
}

impl Cuts {
    /// The file's JSON pointer for a `path` into the cut value.
    fn pointer(&self, path: &[Segment]) -> String {
        let mut at = String::new();
        for segment in path {
            let step = match segment {
                Segment::Map { key } => key.replace('~', "~0").replace('/', "~1"),
                Segment::Seq { index } => self.file_index(&at, *index).to_string(),
                Segment::Enum { .. } | Segment::Unknown => continue,
            };
            at = format!("{at}/{step}");
        }
        at
    }

    /// The index in the file of item `index` of the cut array at `array`.
    fn file_index(&self, array: &str, index: usize) -> usize {
        let removed = self.items.get(array).map(Vec::as_slice).unwrap_or_default();
        removed.iter().fold(index, |i, &r| if r <= i { i + 1 } else { i })
    }

    /// Removes what `path` points to from `value`; false when there is
    /// nothing to remove (the whole file, or a path serde could not name).
    fn cut(&mut self, value: &mut Value, path: &[Segment]) -> bool {
        let Some((last, parents)) = path.split_last() else { return false };
        let mut target = value;
        for segment in parents {
            let next = match segment {
                Segment::Map { key } => target.get_mut(key.as_str()),
                Segment::Seq { index } => target.get_mut(*index),
                Segment::Enum { .. } | Segment::Unknown => None,
            };
            let Some(next) = next else { return false };
            target = next;
        }
        let at = self.pointer(parents);
        match (last, target) {
            (Segment::Map { key }, Value::Object(object)) if object.contains_key(key) => {
                object.shift_remove(key);
                self.keys.push((at, key.clone()));
                true
            }
            (Segment::Seq { index }, Value::Array(items)) if *index < items.len() => {
                let in_file = self.file_index(&at, *index);
                items.remove(*index);
                let removed = self.items.entry(at).or_default();
                let slot = removed.partition_point(|&r| r < in_file);
                removed.insert(slot, in_file);
                true
            }
            _ => false,
        }
    }

    /// Whether the error is a required key missing because it was cut for an
    /// error of its own, already reported.
    fn made_missing(&self, path: &[Segment], message: &str) -> bool {
        let at = self.pointer(path);
        self.keys.iter().any(|(object, key)| *object == at && message == format!("missing field `{key}`"))
    }
}

fn version_of(config: &WorkspaceConfig) -> String {
    let canonical = serde_json::to_vec(config).expect("config serializes");
    let digest = Sha256::digest(&canonical);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        assert_eq!(at, ["/commnd", "/args/0", "/args/1", "/health/interval", "/health/bogus", "/transport", ""]);
        assert!(errors.iter().all(|e| e.message.chars().next().unwrap().is_lowercase()));
        assert!(errors[0].message.starts_with("unknown field `commnd`, expected one of"), "{errors:?}");
        assert_eq!(errors[1].message, "invalid type: integer `1`, expected a string");
        assert_eq!(errors[6].message, "missing field `command`");
    }

    fn pointers(text: &str) -> Vec<String> {
        parse(text.as_bytes()).unwrap_err().into_iter().map(|e| e.at).collect()
    }

    #[test]
    fn later_errors_in_an_array_keep_the_file_indices() {
        assert_eq!(
            pointers(r#"{"command":"x","args":[1,"ok",2,"${NOPE}",[]]}"#),
            ["/args/0", "/args/2", "/args/3", "/args/4"]
        );
    }

    #[test]
    fn a_bad_required_key_is_one_error_not_two() {
        let errors = parse(br#"{"command": 5}"#).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].at, "/command");
        assert_eq!(errors[0].message, "invalid type: integer `5`, expected a string");
    }

    #[test]
    fn kinds_report_their_rules_at_their_pointer() {
        let errors = parse(
            br#"{"command":"", "env":{"A=B":"x","OK":"${PORT"}, "envPassthrough":["PATH",""], "path":"mcp",
                "health":{"interval":"0s","failureThreshold":0}, "limits":{"memoryMb":0},
                "stop":{"signal":"SIGFOO","grace":"5x"}, "a/b~c": 1}"#,
        )
        .unwrap_err();
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.at.as_str(), e.message.as_str())).collect();
        assert_eq!(got[0], ("/command", "must not be empty"));
        assert_eq!(got[1].0, "/env/A=B");
        assert_eq!(got[2], ("/env/OK", "unterminated template at byte 0: \"${\" without \"}\""));
        assert_eq!(got[3].0, "/envPassthrough/1");
        assert_eq!(got[4], ("/path", "path \"mcp\" must start with \"/\""));
        assert_eq!(got[5], ("/health/interval", "duration must be greater than zero"));
        assert_eq!(got[6], ("/health/failureThreshold", "must be at least 1"));
        assert_eq!(got[7], ("/limits/memoryMb", "must be at least 1"));
        assert_eq!(got[8].0, "/stop/signal");
        assert!(got[8].1.starts_with("unknown variant `SIGFOO`, expected one of `SIGTERM`"), "{}", got[8].1);
        assert_eq!(got[9].0, "/stop/grace");
        assert_eq!(got[10].0, "/a~1b~0c", "keys are escaped as RFC 6901 says");
        assert_eq!(errors.len(), 11, "{got:?}");
    }

    #[test]
    fn nul_bytes_are_rejected_wherever_they_would_reach_a_spawn() {
        let errors = parse(
            br#"{"command":"py\u0000", "args":["ok","a\u0000b"], "env":{"K\u0000":"v","V":"\u0000"}, "cwd":"/tmp\u0000",
                "envPassthrough":["PA\u0000TH"]}"#,
        )
        .unwrap_err();
        let at: Vec<&str> = errors.iter().map(|e| e.at.as_str()).collect();
        assert_eq!(at, ["/command", "/args/1", "/env/K\u{0}", "/env/V", "/cwd", "/envPassthrough/0"]);
        assert_eq!(
            errors[0].message,
            "NUL byte at byte 2: a command, argument, environment variable or path cannot hold one"
        );
        assert!(errors[2].message.contains("NUL"), "{}", errors[2].message);
    }

    #[test]
    fn schema_key_is_ignored_and_not_part_of_the_version() {
        let with = parse(br#"{"$schema":"../schema/workspace.schema.json","command":"x"}"#).unwrap();
        let without = parse(br#"{"command":"x"}"#).unwrap();
        assert_eq!(with, without);
        assert_eq!(version_of(&with), version_of(&without));
        assert_eq!(pointers(r#"{"$schema":1,"command":"x"}"#), ["/$schema"]);
    }

    #[test]
    fn stop_signal_names_map_to_signals() {
        let c = parse(br#"{"command":"x","stop":{"signal":"SIGUSR1"}}"#).unwrap();
        assert_eq!(c.stop.signal, crate::config::StopSignal::Usr1);
        assert_eq!(c.stop.signal.as_nix(), nix::sys::signal::Signal::SIGUSR1);
        assert_eq!(parse(br#"{"command":"x"}"#).unwrap().stop.signal.as_nix(), nix::sys::signal::Signal::SIGTERM);
    }

    #[test]
    fn a_file_that_is_not_an_object_is_one_error() {
        let errors = parse(b"[1, 2]").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].at, "");
        assert_eq!(errors[0].message, "invalid type: sequence, expected struct WorkspaceConfig");
        assert_eq!(pointers(r#"{"command":"x","health":[],"limits":null}"#), ["/health", "/limits"]);
    }

    #[test]
    fn syntax_error_keeps_serde_json_text() {
        let errors = parse(b"{\"command\": \"x").unwrap_err();
        assert_eq!(errors[0].message, "EOF while parsing a string");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let errors = parse(b"{\n  \"command\": \"x\",\n  oops\n}").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].at, "3:3");
    }

    /// A read that fails for a reason of the moment (here an injected
    /// EMFILE; a real one needs the whole test process short of fds) is a
    /// read error, not an invalid file; `validate` still reports it.
    #[test]
    fn a_failed_read_is_not_an_invalid_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.json");
        std::fs::write(&path, r#"{"command":"x"}"#).unwrap();
        let emfile = |_: &Path| Err(std::io::Error::from(nix::errno::Errno::EMFILE));
        let error = read_file_with(&path, emfile).unwrap_err();
        assert_eq!(error.source.raw_os_error(), Some(nix::errno::Errno::EMFILE as i32));
        assert!(read_file(&path).unwrap().unwrap().config.is_ok());

        // A symlink loop fails every read for real: the scan lists it apart.
        std::os::unix::fs::symlink("loop.json", dir.path().join("loop.json")).unwrap();
        std::fs::create_dir(dir.path().join("folder.json")).unwrap();
        let scan = scan_dir(dir.path()).unwrap();
        let names: Vec<&str> = scan.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["dev"], "a folder named *.json is skipped");
        assert_eq!(scan.unreadable.len(), 1);
        assert_eq!(name_of(&scan.unreadable[0].path), "loop");
        let loaded = load_dir(dir.path()).unwrap();
        assert!(loaded.iter().any(|f| f.name == "loop" && f.config.is_err()), "validate reports it");
    }

    #[test]
    fn file_names_and_messages_cannot_forge_log_lines() {
        let error = FileError {
            file: PathBuf::from("w/Bad\nINFO forged.json"),
            errors: vec![ConfigError { at: String::new(), message: "unknown field `a\nb`, \"quoted\"".into() }],
        };
        assert_eq!(error.to_string(), "w/Bad\\nINFO forged.json: unknown field `a\\nb`, \"quoted\"");
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
