//! The JSON Schema of a workspace file, derived from the config types.
//!
//! `schema/workspace.schema.json` is this schema as committed; workspace
//! files name it in their `"$schema"` key so editors complete and check them.
//! A test fails when the committed file differs from what the types give.

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::Schema;
use serde_json::{json, Map, Value};

use super::types::WorkspaceConfig;

/// Where the committed schema lives, relative to the repository root.
pub const SCHEMA_FILE: &str = "schema/workspace.schema.json";

/// The JSON Schema (draft 2020-12) of a workspace file.
///
/// It is the schema of [`WorkspaceConfig`] plus the optional `"$schema"` key
/// that editors read and mcpvisor ignores.
pub fn workspace_schema() -> Value {
    let generator = SchemaSettings::draft2020_12().with_transform(RecursiveTransform(unwrap_lines)).into_generator();
    let Value::Object(mut schema) = generator.into_root_schema_for::<WorkspaceConfig>().to_value() else {
        unreachable!("a root schema is an object")
    };
    let editor_key = json!({
        "description": "The JSON Schema of this file, for editors; mcpvisor ignores it.",
        "type": "string",
    });
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.shift_insert(0, "$schema".into(), editor_key);
    }
    // The keys a reader looks for first, then the rest as generated.
    let mut ordered = Map::new();
    for key in ["$schema", "title", "description", "type", "required", "additionalProperties", "properties"] {
        if let Some(value) = schema.shift_remove(key) {
            ordered.insert(key.into(), value);
        }
    }
    ordered.extend(schema);
    Value::Object(ordered)
}

/// Joins the lines of doc comments that were wrapped only for width;
/// paragraphs stay apart.
fn unwrap_lines(schema: &mut Schema) {
    if let Some(Value::String(text)) = schema.get_mut("description") {
        *text = text.split("\n\n").map(|paragraph| paragraph.replace('\n', " ")).collect::<Vec<_>>().join("\n\n");
    }
}

/// The committed file's text for `schema`: pretty JSON with a final newline.
pub fn schema_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a JSON value serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `schema/workspace.schema.json` is what the types give.
    ///
    /// After a change to the config types, regenerate it with
    /// `UPDATE_SCHEMA=1 cargo test --lib config::schema` and commit the file.
    #[test]
    fn committed_schema_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA_FILE);
        let generated = schema_text(&workspace_schema());
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{SCHEMA_FILE} differs from the config types; regenerate it with \
             `UPDATE_SCHEMA=1 cargo test --lib config::schema` and commit it"
        );
    }
}
