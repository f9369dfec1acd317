//! The API description, `GET /v1/openapi.json`, generated from the same table that
//! builds the router: a route cannot be served without being described, nor described
//! without being served.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use hookline_shared::domain::payload::PayloadFormat;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// What one operation takes and answers, for the description.
#[derive(Debug, Clone, Copy)]
pub struct Doc {
    pub summary: &'static str,
    /// A schema name under `components.schemas`, when the operation takes a JSON body.
    pub body: Option<&'static str>,
    /// Success status and what it returns.
    pub ok: (u16, &'static str),
    /// Query parameters, by name.
    pub query: &'static [&'static str],
}

impl Doc {
    pub const fn new(summary: &'static str, ok: (u16, &'static str)) -> Self {
        Self {
            summary,
            body: None,
            ok,
            query: &[],
        }
    }

    pub const fn body(mut self, schema: &'static str) -> Self {
        self.body = Some(schema);
        self
    }

    pub const fn query(mut self, names: &'static [&'static str]) -> Self {
        self.query = names;
        self
    }
}

/// Builds the `/v1` router and its description together.
pub struct Documented<S> {
    routes: BTreeMap<&'static str, MethodRouter<S>>,
    operations: Vec<(Method, &'static str, Doc)>,
}

impl<S> std::fmt::Debug for Documented<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Documented")
            .field("operations", &self.operations.len())
            .finish()
    }
}

impl<S: Clone + Send + Sync + 'static> Default for Documented<S> {
    fn default() -> Self {
        Self {
            routes: BTreeMap::new(),
            operations: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Documented<S> {
    /// Serves `handler` for `method` on `path` (relative to `/v1`) and describes it.
    pub fn op<H, T>(mut self, method: Method, path: &'static str, handler: H, doc: Doc) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| unreachable!("the API uses standard methods only"));
        let route = self.routes.remove(path).unwrap_or_default();
        self.routes.insert(path, route.on(filter, handler));
        self.operations.push((method, path, doc));
        self
    }

    pub fn operations(&self) -> &[(Method, &'static str, Doc)] {
        &self.operations
    }

    /// The operations' routes under `/v1`. Written out in full rather than nested: a
    /// nested router rebuilds every request's URI without the prefix.
    pub fn into_router(self) -> Router<S> {
        self.routes
            .into_iter()
            .fold(Router::new(), |router, (path, route)| {
                router.route(&format!("/v1{path}"), route)
            })
    }

    /// The OpenAPI 3.1 document for these operations, served under `/v1`.
    pub fn openapi(&self) -> Value {
        let mut paths = Map::new();
        for (method, path, doc) in &self.operations {
            let full = format!("/v1{path}");
            let mut parameters: Vec<Value> = path_parameters(path)
                .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
                .collect();
            parameters.extend(doc.query.iter().map(
                |name| json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"}}),
            ));
            let mut operation = json!({
                "summary": doc.summary,
                "operationId": operation_id(method, path),
                "parameters": parameters,
                "responses": {
                    doc.ok.0.to_string(): {"description": doc.ok.1, "content": {"application/json": {}}},
                    "default": {"description": "An error naming the field",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            });
            if let Some(schema) = doc.body {
                operation["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
                });
            }
            let item = paths.entry(full).or_insert_with(|| json!({}));
            item[method.as_str().to_ascii_lowercase()] = operation;
        }
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Hookline API",
                "version": hookline_shared::VERSION,
                "description": "Event ingest and webhook management. Every call needs `Authorization: Bearer <token>`.",
            },
            "security": [{"bearer": []}],
            "paths": paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": schemas(),
            },
        })
    }
}

fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

fn operation_id(method: &Method, path: &str) -> String {
    let words: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .collect();
    format!(
        "{}_{}",
        method.as_str().to_ascii_lowercase(),
        words.join("_").replace('-', "_")
    )
}

/// The request bodies. Field rules (patterns, lengths) are enforced by the handlers and
/// reported as 422 naming the field; these schemas describe the shapes.
fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}},
        },
        "Event": {
            "type": "object",
            "required": ["type", "data"],
            "properties": {
                "id": {"type": "string", "maxLength": 128},
                "type": {"type": "string", "description": "dot-separated lowercase words, e.g. profile.parsing.success"},
                "occurred_at": {"type": "string", "format": "date-time"},
                "version": {"type": "string"},
                "data": {},
                "changes": {"type": "object", "additionalProperties": {"type": "object", "required": ["from", "to"]}},
                "actor": {"type": "object", "properties": {"id": {}, "name": {"type": "string"}, "email": {"type": "string"}}},
                "priority": {"type": "string", "enum": ["realtime", "bulk"], "default": "realtime",
                    "description": "bulk: delivered with the capacity real-time events leave, with a floor share"},
                "ordering_key": {"type": "string", "maxLength": 128,
                    "description": "events with the same key reach ordered endpoints one at a time, in acceptance order"},
                "subject": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9_.:-]+$",
                    "description": "whose personal data the event carries (candidate:81): what POST …/erasures names"},
            },
        },
        "EventBatch": {
            "type": "object",
            "required": ["events"],
            "properties": {"events": {"type": "array", "minItems": 1,
                "items": {"$ref": "#/components/schemas/Event"},
                "description": "at most api.max_batch_events (500) events"}},
        },
        "Quota": {
            "type": "object",
            "required": ["per_minute"],
            "properties": {
                "per_minute": {"type": "integer", "minimum": 0, "description": "events a minute on average; 0: unlimited"},
                "burst": {"type": "integer", "minimum": 1, "description": "events at once; required when per_minute > 0"},
            },
        },
        "Endpoint": {
            "type": "object",
            "required": ["url", "event_types"],
            "properties": {
                "url": {"type": "string", "format": "uri"},
                "event_types": {"type": "array", "items": {"type": "string"}, "description": "AMQP topic patterns: * one word, # zero or more"},
                "description": {"type": "string"},
                "format": {"description": "docs/formats.md", "oneOf": [
                    {"$ref": "#/components/schemas/Preset"},
                    {"type": "object", "required": ["template"], "properties": {"template": {
                        "type": "object", "required": ["body"], "properties": {
                            "content_type": {"type": "string", "enum": ["json", "form"]},
                            "body": {"description": "JSON whose strings may hold {{ placeholders }}"}}}}}]},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "secret": {"type": "string", "description": "whsec_ + base64; generated when absent"},
                "enabled": {"type": "boolean"},
                "filter": {"type": "object", "description": "dotted path into data → value or list of values"},
                "rate_limit_per_s": {"type": "integer", "minimum": 1},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}, "description": "values formats may print, e.g. export_key"},
                "event_names": {"type": "object", "additionalProperties": {"type": "string"}, "description": "event type → name printed by {{event_name}} and event_data"},
                "ordered": {"type": "boolean", "description": "events with the same ordering_key are attempted one at a time, in the order they were accepted"},
                "send_traceparent": {"type": "boolean", "default": true, "description": "each request carries a W3C traceparent in the event's trace"},
                "verify": {"type": "boolean", "description": "send a hookline.ping first; refuse if it fails"},
            },
        },
        // The console lists these in its format picker: the domain's list is the one source.
        "Preset": {"type": "string", "enum": PayloadFormat::PRESETS, "description": "A built-in format"},
        "EndpointPatch": {"type": "object", "description": "A JSON merge patch (RFC 7396) of Endpoint fields"},
        "TestEvent": {"type": "object", "properties": {"type": {"type": "string"}, "data": {}}},
        "Replay": {"type": "object", "properties": {
            "endpoint": {"type": "string"},
            "since": {"type": "string", "format": "date-time"},
            "until": {"type": "string", "format": "date-time"}}},
        "Retention": {"type": "object", "additionalProperties": false, "properties": {
            "history": {"type": "string", "description": "event states and attempt logs, e.g. 2d (at least 1s)"},
            "dead_letters": {"type": "string", "description": "the dead-letter index, e.g. 7d"}}},
        "Erasure": {"type": "object", "description": "exactly one of subject and event_id",
            "additionalProperties": false, "properties": {
            "subject": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9_.:-]+$"},
            "event_id": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9_.:-]+$"}}},
        "EventType": {"type": "object", "properties": {"description": {"type": "string"}, "example": {}}},
        "Preview": {"type": "object", "properties": {"event": {"$ref": "#/components/schemas/Event"}}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_parameters_and_bodies() {
        let api = Documented::<()>::default()
            .op(
                Method::POST,
                "/tenants/{tenant}/endpoints/{endpoint_id}/test",
                || async {},
                Doc::new("Send a test event", (200, "The receiver's answer")).body("TestEvent"),
            )
            .op(
                Method::GET,
                "/tenants/{tenant}/dead-letters",
                || async {},
                Doc::new("List", (200, "A page")).query(&["limit", "cursor"]),
            );
        let doc = api.openapi();
        let test = &doc["paths"]["/v1/tenants/{tenant}/endpoints/{endpoint_id}/test"]["post"];
        assert_eq!(test["operationId"], "post_tenants_endpoints_test");
        let names: Vec<&str> = test["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, ["tenant", "endpoint_id"]);
        assert_eq!(
            test["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/TestEvent"
        );
        let list = &doc["paths"]["/v1/tenants/{tenant}/dead-letters"]["get"];
        assert_eq!(list["parameters"][1]["in"], "query");
        for schema in ["TestEvent", "Event", "Endpoint", "Error"] {
            assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
        }
    }

    #[test]
    fn the_preset_schema_is_the_domain_list_and_every_name_parses() {
        let doc = Documented::<()>::default().openapi();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["Endpoint"]["properties"]["format"]["oneOf"][0]["$ref"],
            "#/components/schemas/Preset"
        );
        let names = schemas["Preset"]["enum"].as_array().expect("enum");
        assert_eq!(names.len(), PayloadFormat::PRESETS.len());
        for name in names {
            PayloadFormat::from_value(name.clone()).expect("a preset the API accepts");
        }
    }
}
