//! Tool arguments and schemas: the argument extractor that turns bad
//! arguments into invalid-params errors naming the field, and the schema
//! rewriting that keeps every client's validator and coercion happy.

use rmcp::handler::server::common::{schema_for_input, schema_for_output, FromContextPart};
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::JsonObject;
use rmcp::ErrorData;
use schemars::JsonSchema;
use std::sync::Arc;

/// Tool arguments that fail to deserialize (wrong JSON types, missing or
/// unknown fields) are an invalid-params protocol error naming the field.
/// (rmcp's own `Parameters` turns them into `isError` tool results instead.)
pub struct Args<T>(pub T);

impl<S, T: serde::de::DeserializeOwned> FromContextPart<ToolCallContext<'_, S>> for Args<T> {
    fn from_context_part(context: &mut ToolCallContext<S>) -> Result<Self, ErrorData> {
        let arguments = serde_json::Value::Object(context.arguments.take().unwrap_or_default());
        serde_path_to_error::deserialize(arguments)
            .map(Args)
            .map_err(|e| {
                let field = e.path().to_string();
                let message = if field == "." {
                    format!("invalid arguments: {}", e.inner())
                } else {
                    format!("invalid arguments: {field}: {}", e.inner())
                };
                ErrorData::invalid_params(message, None)
            })
    }
}

pub fn input_schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    optional_not_null(portable(
        schema_for_input::<T>().expect("argument types have object schemas"),
    ))
}

/// Optional arguments are written `type: [T, "null"]` (or `anyOf` with
/// null) by schemars; clients that coerce command-line values by the
/// schema's `type` (the MCP Inspector CLI turns `max_tokens=16` into a
/// number only when `type` is `"integer"`) then send strings. An optional
/// argument is simply left out, so input schemas say `type: T`; the server
/// still accepts an explicit null.
fn optional_not_null(schema: Arc<JsonObject>) -> Arc<JsonObject> {
    use serde_json::Value;
    let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
    fn fix(v: &mut Value, defs: &Value) {
        let Value::Object(map) = v else {
            if let Value::Array(items) = v {
                items.iter_mut().for_each(|i| fix(i, defs));
            }
            return;
        };
        if let Some(Value::Array(types)) = map.get("type") {
            let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
            if rest.len() == 1 && rest.len() < types.len() {
                map.insert("type".into(), rest[0].clone());
                if map.get("default") == Some(&Value::Null) {
                    map.remove("default");
                }
            }
        }
        if let Some(Value::Array(any)) = map.get("anyOf") {
            let rest: Vec<Value> = any
                .iter()
                .filter(|s| s.get("type") != Some(&Value::from("null")))
                .cloned()
                .collect();
            if let [Value::Object(only)] = rest.as_slice() {
                let only = only.clone();
                map.remove("anyOf");
                if map.get("default") == Some(&Value::Null) {
                    map.remove("default");
                }
                let target_type = only
                    .get("$ref")
                    .and_then(|r| r.as_str())
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                    .and_then(|name| defs.get(name))
                    .and_then(|d| d.get("type"))
                    .cloned();
                map.extend(only);
                if let Some(t) = target_type {
                    map.entry("type").or_insert(t);
                }
            }
        }
        map.values_mut().for_each(|x| fix(x, defs));
    }
    let mut value = Value::Object((*schema).clone());
    fix(&mut value, &defs);
    match value {
        Value::Object(map) => Arc::new(map),
        _ => schema,
    }
}

pub fn output_schema<T: JsonSchema + 'static>() -> Arc<JsonObject> {
    portable(schema_for_output::<T>())
}

/// Drops schemars' Rust-specific integer and float formats (`uint32`,
/// `double`, ...): JSON Schema validators in clients (ajv in the MCP
/// Inspector, for one) warn about every unknown format. `minimum: 0` and
/// `type: integer` already say what they meant.
fn portable(schema: Arc<JsonObject>) -> Arc<JsonObject> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                let rust_format = map.get("format").and_then(|f| f.as_str()).is_some_and(|f| {
                    matches!(f, "uint" | "int" | "float" | "double")
                        || f.starts_with("uint")
                        || f.starts_with("int")
                });
                if rust_format {
                    map.remove("format");
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::Value::Object((*schema).clone());
    strip(&mut value);
    match value {
        serde_json::Value::Object(map) => Arc::new(map),
        _ => schema,
    }
}
