//! `${NAME}` templates in workspace files (docs/reference.md §3).
//!
//! `$$` is a literal `$`; a `$` not followed by `{` stays as it is; an
//! unknown `${X}`, an unterminated `${` and a NUL byte are errors (the strings
//! with templates are the command, its arguments, environment values and the
//! working directory, none of which can hold a NUL).

use thiserror::Error;

/// The names a template may use, with their values for one child.
pub const NAMES: [&str; 5] = ["PORT", "WORKSPACE", "DATA_DIR", "WORKSPACES_DIR", "MCPVISOR"];

/// Values for the template names of one child.
#[derive(Debug, Clone, Default)]
pub struct TemplateVars {
    pub port: u16,
    pub workspace: String,
    pub data_dir: String,
    pub workspaces_dir: String,
    pub mcpvisor: String,
}

impl TemplateVars {
    fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "PORT" => self.port.to_string(),
            "WORKSPACE" => self.workspace.clone(),
            "DATA_DIR" => self.data_dir.clone(),
            "WORKSPACES_DIR" => self.workspaces_dir.clone(),
            "MCPVISOR" => self.mcpvisor.clone(),
            _ => return None,
        })
    }
}

/// What the JSON Schema says of a string with templates.
pub const DESCRIPTION: &str = "A string with templates: ${PORT}, ${WORKSPACE}, ${DATA_DIR}, ${WORKSPACES_DIR}, \
    ${MCPVISOR}; \"$$\" is a literal \"$\", and a \"$\" not followed by \"{\" stays as it is.";

/// The regular expression of a string [`expand`] accepts, for the JSON Schema.
///
/// Each piece is one step of the expander: a plain character (not NUL), `$$`,
/// a known `${NAME}`, or a `$` with the character after it that is neither
/// `$` nor `{`; a lone `$` may end the string. ECMA-262 and Rust `regex` read
/// it alike.
pub fn pattern() -> String {
    format!(r"^(?:[^$\u0000]|\$\$|\$\{{(?:{})\}}|\$[^${{\u0000])*\$?$", NAMES.join("|"))
}

/// Checks the templates of `input` without expanding them.
///
/// # Errors
/// As [`expand`].
pub fn check(input: &str) -> Result<(), TemplateError> {
    expand(input, None).map(drop)
}

/// Why a string with templates cannot be expanded; `at` is a byte offset
/// into the string.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    #[error(
        "unknown template ${{{}}} at byte {at} (known: PORT, WORKSPACE, DATA_DIR, WORKSPACES_DIR, MCPVISOR)",
        name.escape_debug()
    )]
    Unknown { name: String, at: usize },
    #[error("unterminated template at byte {at}: \"${{\" without \"}}\"")]
    Unterminated { at: usize },
    /// No program, argument, environment variable or path can hold a NUL
    /// byte: every spawn would fail.
    #[error("NUL byte at byte {at}: a command, argument, environment variable or path cannot hold one")]
    Nul { at: usize },
}

/// Expands every template in `input`.
///
/// With `vars = None` it only checks the templates, which is what validation
/// does before a port is known.
///
/// # Errors
/// A NUL byte anywhere, else the first unknown or unterminated template.
pub fn expand(input: &str, vars: Option<&TemplateVars>) -> Result<String, TemplateError> {
    if let Some(at) = input.find('\0') {
        return Err(TemplateError::Nul { at });
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(found) = rest.find('$') {
        let at = input.len() - rest.len() + found;
        out.push_str(&rest[..found]);
        let after = &rest[found + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or(TemplateError::Unterminated { at })?;
            let name = &tail[..end];
            if !NAMES.contains(&name) {
                return Err(TemplateError::Unknown { name: name.to_string(), at });
            }
            if let Some(value) = vars.and_then(|v| v.get(name)) {
                out.push_str(&value);
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> TemplateVars {
        TemplateVars {
            port: 41000,
            workspace: "dev".into(),
            data_dir: "/s/workspaces/dev".into(),
            workspaces_dir: "/w".into(),
            mcpvisor: "/bin/mcpvisor".into(),
        }
    }

    #[test]
    fn expands_known_names() {
        let got = expand("--port=${PORT} ${WORKSPACE}@${DATA_DIR}", Some(&vars())).unwrap();
        assert_eq!(got, "--port=41000 dev@/s/workspaces/dev");
    }

    #[test]
    fn dollar_rules() {
        assert_eq!(expand("a$$b", Some(&vars())).unwrap(), "a$b");
        assert_eq!(expand("$HOME/x $", Some(&vars())).unwrap(), "$HOME/x $");
        assert_eq!(expand("$${PORT}", Some(&vars())).unwrap(), "${PORT}");
    }

    /// The schema's pattern takes exactly what the expander takes.
    #[test]
    fn pattern_agrees_with_expand() {
        let pattern = regex::Regex::new(&pattern()).unwrap();
        for text in
            ["", "plain", "$", "a$", "$$", "$$$", "$x$", "${PORT}", "$${PORT}", "${PORT}}", "é$ü", "$}", "a\nb$"]
        {
            assert!(pattern.is_match(text), "{text:?}");
            assert!(check(text).is_ok(), "{text:?}");
        }
        for text in ["${", "${}", "${NOPE}", "${PORT", "x${port}", "$$${", "${PORT}${", "a\0b", "$\0"] {
            assert!(!pattern.is_match(text), "{text:?}");
            assert!(check(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn errors() {
        assert_eq!(expand("a ${NOPE}", None), Err(TemplateError::Unknown { name: "NOPE".into(), at: 2 }));
        assert_eq!(expand("${PORT} ${PORT", None), Err(TemplateError::Unterminated { at: 8 }));
        assert_eq!(expand("--x=\0", Some(&vars())), Err(TemplateError::Nul { at: 4 }));
        let newline = expand("${A\nB}", None).unwrap_err().to_string();
        assert!(newline.starts_with("unknown template ${A\\nB} at byte 0"), "{newline}");
    }
}
