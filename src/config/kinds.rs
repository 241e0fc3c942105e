//! The checked kinds of value in a workspace file (docs/reference.md §3).
//!
//! Each kind is a newtype that deserializes with its rules (a template names
//! only known templates, a duration is above zero, a count is at least 1)
//! and describes the same rules as JSON Schema. The config types keep plain
//! field types (`String`, `Duration`, `u32`) and name a kind twice: in
//! `#[serde(deserialize_with = "checked::<_, Kind>")]`, so the rules run with
//! the field's JSON pointer, and in `#[schemars(with = "Kind")]`, so editors
//! check the same rules. That keeps one place per rule.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::template;

/// A kind that unwraps into the plain type a config field holds.
pub(super) trait Checked {
    type Plain;
    fn into_plain(self) -> Self::Plain;
}

/// Deserializes the kind `K` with its checks and hands back its plain value.
///
/// # Errors
/// The kind's own error, as serde reports it at the field's path.
pub(super) fn checked<'de, D: Deserializer<'de>, K: Checked + Deserialize<'de>>(
    deserializer: D,
) -> Result<K::Plain, D::Error> {
    K::deserialize(deserializer).map(Checked::into_plain)
}

impl<K: Checked> Checked for Vec<K> {
    type Plain = Vec<K::Plain>;
    fn into_plain(self) -> Self::Plain {
        self.into_iter().map(Checked::into_plain).collect()
    }
}

impl<K: Checked> Checked for Option<K> {
    type Plain = Option<K::Plain>;
    fn into_plain(self) -> Self::Plain {
        self.map(Checked::into_plain)
    }
}

impl<K: Checked, V: Checked> Checked for BTreeMap<K, V>
where
    K::Plain: Ord,
{
    type Plain = BTreeMap<K::Plain, V::Plain>;
    fn into_plain(self) -> Self::Plain {
        self.into_iter().map(|(k, v)| (k.into_plain(), v.into_plain())).collect()
    }
}

/// Implements [`Checked`] and a `Deserialize` that runs `check` on the
/// value of the plain type first deserialized.
macro_rules! kind {
    ($kind:ident($plain:ty), $check:expr) => {
        impl Checked for $kind {
            type Plain = $plain;
            fn into_plain(self) -> $plain {
                self.0
            }
        }

        impl<'de> Deserialize<'de> for $kind {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = <$plain>::deserialize(deserializer)?;
                let check: fn(&$plain) -> Result<(), String> = $check;
                check(&value).map_err(D::Error::custom)?;
                Ok($kind(value))
            }
        }
    };
}

/// Gives a kind a named JSON Schema definition (`#/$defs/<name>`).
macro_rules! schema {
    ($kind:ident, $schema:expr) => {
        impl JsonSchema for $kind {
            fn schema_name() -> Cow<'static, str> {
                stringify!($kind).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

/// A string in which `${NAME}` templates are checked.
pub(super) struct Template(String);

kind!(Template(String), |s| template::check(s).map_err(|e| e.to_string()));
schema!(
    Template,
    json_schema!({
        "type": "string",
        "description": template::DESCRIPTION,
        "pattern": template::pattern(),
    })
);

/// A [`Template`] that must not be empty (`command`, `cwd`).
pub(super) struct NonEmptyTemplate(String);

kind!(NonEmptyTemplate(String), |s| match s.is_empty() {
    true => Err("must not be empty".into()),
    false => template::check(s).map_err(|e| e.to_string()),
});
schema!(
    NonEmptyTemplate,
    json_schema!({
        "type": "string",
        "description": template::DESCRIPTION,
        "minLength": 1,
        "pattern": template::pattern(),
    })
);

/// The name of an environment variable: not empty, no `=`, no NUL byte.
pub(super) struct EnvName(String);

kind!(EnvName(String), |s| match s.is_empty() || s.contains(['=', '\0']) {
    true => Err(format!("{s:?} is not an environment variable name (empty, or with \"=\" or a NUL byte)")),
    false => Ok(()),
});
schema!(
    EnvName,
    json_schema!({
        "type": "string",
        "description": "The name of an environment variable: not empty, without \"=\" or NUL.",
        "pattern": "^[^=\\u0000]+$",
    })
);

// `BTreeMap<EnvName, _>` needs an ordered key; only the deserialized map is
// ever built, and `into_plain` turns it into plain strings right away.
impl PartialEq for EnvName {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for EnvName {}
impl PartialOrd for EnvName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for EnvName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// An HTTP path on the child, starting with `/`.
pub(super) struct EndpointPath(String);

kind!(EndpointPath(String), |s| match s.starts_with('/') {
    true => Ok(()),
    false => Err(format!("path {s:?} must start with \"/\"")),
});
schema!(
    EndpointPath,
    json_schema!({
        "type": "string",
        "description": "An HTTP path on the child, starting with \"/\".",
        "pattern": "^/",
    })
);

/// A whole number of at least 1 (a threshold, a limit).
pub(super) struct Positive<T>(T);

impl<T> Checked for Positive<T> {
    type Plain = T;
    fn into_plain(self) -> T {
        self.0
    }
}

impl<'de, T: Deserialize<'de> + Into<u64> + Copy> Deserialize<'de> for Positive<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = T::deserialize(deserializer)?;
        match value.into() {
            0 => Err(D::Error::custom("must be at least 1")),
            _ => Ok(Positive(value)),
        }
    }
}

impl<T: JsonSchema> JsonSchema for Positive<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        format!("Positive_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = T::json_schema(generator);
        schema.insert("minimum".into(), 1.into());
        schema
    }
}

/// A humantime duration above zero, like `"500ms"`, `"10s"` or `"1h 30m"`.
pub(super) struct Duration(std::time::Duration);

impl Checked for Duration {
    type Plain = std::time::Duration;
    fn into_plain(self) -> Self::Plain {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration: std::time::Duration = humantime_serde::deserialize(deserializer)?;
        match duration.is_zero() {
            true => Err(D::Error::custom("duration must be greater than zero")),
            false => Ok(Duration(duration)),
        }
    }
}

schema!(
    Duration,
    json_schema!({
        "type": "string",
        "description": "A duration above zero: numbers with units, like \"500ms\", \"10s\", \"1h 30m\" \
            (units: ns, us, ms, s, m, h, d, w, M, y and their long forms such as sec, min, hours).",
        "pattern": duration_pattern(),
        "not": {"pattern": "^[^1-9]*$"},
    })
);

/// The unit names humantime accepts.
const DURATION_UNITS: [&str; 40] = [
    "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second", "secs", "sec", "s",
    "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr", "h", "days", "day", "d", "weeks", "week",
    "wks", "wk", "w", "months", "month", "M", "years", "year", "yrs", "yr", "y",
];

/// The regular expression of a humantime duration, as written in files: one
/// or more `<number>[.<fraction>] <unit>`, spaces optional.
///
/// It is the documented syntax, slightly narrower than humantime's parser
/// (which also takes spaces inside a number); ECMA-262 and Rust `regex` read
/// it alike.
pub(super) fn duration_pattern() -> String {
    format!(r"^\s*(?:[0-9]+(?:\.[0-9]+)?\s*(?:{})\s*)+$", DURATION_UNITS.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's duration pattern and humantime agree: what the pattern
    /// takes parses (or overflows), and what we format, the pattern takes.
    #[test]
    fn duration_pattern_agrees_with_humantime() {
        let pattern = regex::Regex::new(&duration_pattern()).unwrap();
        for text in ["500ms", "10s", "1h 30m", "1.5h", " 2 min ", "1y", "3M", "4µs", "1h30m5s", "7 nanos"] {
            assert!(pattern.is_match(text), "{text}");
            assert!(humantime::parse_duration(text).is_ok(), "{text}");
        }
        for text in ["", "5", "5x", "ms", "-1s", "1.s", "1,5s", "1h 30"] {
            assert!(!pattern.is_match(text), "{text}");
            assert!(humantime::parse_duration(text).is_err(), "{text}");
        }
        for secs in [1, 59, 61, 3599, 86_401, 31_557_601] {
            for nanos in [0, 1, 1_000, 1_000_000, 999_999_999] {
                let formatted = humantime::format_duration(std::time::Duration::new(secs, nanos)).to_string();
                assert!(pattern.is_match(&formatted), "{formatted}");
            }
        }
    }
}
