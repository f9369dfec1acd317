//! Payload templates: a JSON document whose strings may hold `{{ … }}` placeholders that
//! read parts of the event. Presets are templates that ship with the product.
//!
//! The language is deliberately small: placeholders name a value and pass it through a
//! few filters; there are no loops, conditionals or calls, so a template cannot execute
//! code, and rendering is one walk over the compiled tree — linear in the template and
//! the values it copies. Templates see the event and the endpoint's metadata, never the
//! endpoint's secret or headers.

use super::Invalid;
use super::event::Event;
use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use time::format_description::OwnedFormatItem;
use time::format_description::well_known::Rfc3339;

/// Serialized size of a template's body.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
pub const MAX_TEMPLATE_DEPTH: usize = 16;
pub const MAX_PLACEHOLDERS: usize = 256;
/// References whose size depends on the event (`data`, `changes`, `actor` and paths into
/// them). Each may copy up to a whole event, so their count bounds the output.
pub const MAX_EVENT_SIZED_REFERENCES: usize = 32;
/// What one rendering may produce; beyond it the delivery is dead-lettered with reason
/// `render_failed` instead of sending something the receiver cannot use.
pub const MAX_RENDERED_BYTES: usize = 4 * 1024 * 1024;

const SOURCES: &str = "id, type, tenant, version, occurred_at, event_name, data[.path], \
                       changes[.path], actor[.id|.name|.email], metadata.KEY";

/// A validated template, ready to render.
#[derive(Debug, Clone)]
pub struct Template {
    root: Node,
    metadata_keys: Vec<String>,
}

#[derive(Debug, Clone)]
enum Node {
    Literal(Value),
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    /// A string that is exactly one placeholder: the value keeps its JSON type, and a
    /// missing value renders as `null` (fixed-shape payloads rely on that).
    Whole(Expr),
    /// A string mixing text and placeholders: always a string.
    Text(Vec<Piece>),
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Expr(Expr),
}

#[derive(Debug, Clone)]
struct Expr {
    source: Source,
    filters: Vec<Filter>,
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Id,
    Type,
    Tenant,
    Version,
    OccurredAt,
    EventName,
    Data(Vec<String>),
    Changes(Vec<String>),
    Actor(Option<ActorField>),
    Metadata(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ActorField {
    Id,
    Name,
    Email,
}

#[derive(Debug, Clone)]
enum Filter {
    Time(TimeLayout),
    Upper,
    Lower,
    /// A string of digits becomes a JSON number (ids kept as strings by the ATS).
    Number,
    /// Replaces a missing or `null` value.
    Default(Value),
}

#[derive(Debug, Clone)]
enum TimeLayout {
    Rfc3339,
    UnixSeconds,
    UnixMillis,
    Custom(OwnedFormatItem),
}

/// What a template reads besides the event itself.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    pub metadata: &'a BTreeMap<String, String>,
    pub event_names: &'a BTreeMap<String, String>,
}

impl Template {
    /// Compiles a template body. Errors name the offending place as `body.a.b[2]`.
    pub fn compile(body: &Value) -> Result<Self, Invalid> {
        let size = serde_json::to_vec(body).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_TEMPLATE_BYTES {
            return Err(Invalid::new(
                "body",
                format_args!("is {size} bytes; templates are at most {MAX_TEMPLATE_BYTES}"),
            ));
        }
        let mut compiler = Compiler::default();
        let root = compiler.node(body, "body", 0)?;
        if compiler.placeholders > MAX_PLACEHOLDERS {
            return Err(Invalid::new(
                "body",
                format_args!(
                    "has {} placeholders; at most {MAX_PLACEHOLDERS}",
                    compiler.placeholders
                ),
            ));
        }
        if compiler.event_sized > MAX_EVENT_SIZED_REFERENCES {
            return Err(Invalid::new(
                "body",
                format_args!(
                    "copies data, changes or actor {} times; at most \
                     {MAX_EVENT_SIZED_REFERENCES}, so the output stays bounded",
                    compiler.event_sized
                ),
            ));
        }
        compiler.metadata_keys.sort();
        compiler.metadata_keys.dedup();
        Ok(Self {
            root,
            metadata_keys: compiler.metadata_keys,
        })
    }

    /// Endpoint metadata keys the template reads; each must exist on the endpoint.
    pub fn metadata_keys(&self) -> &[String] {
        &self.metadata_keys
    }

    pub fn render(&self, event: &Event, context: RenderContext<'_>) -> Value {
        render_node(&self.root, event, context)
    }

    /// Renders a template whose body must be an object as form fields, in template order:
    /// strings as they are, `null` as empty, anything else as compact JSON.
    pub fn render_form(&self, event: &Event, context: RenderContext<'_>) -> Vec<(String, String)> {
        match self.render(event, context) {
            Value::Object(fields) => fields
                .into_iter()
                .map(|(name, value)| (name, form_value(&value)))
                .collect(),
            other => vec![("data".into(), form_value(&other))],
        }
    }

    /// Whether the body compiles to an object (form templates need one).
    pub fn is_object(&self) -> bool {
        matches!(self.root, Node::Object(_))
    }
}

pub fn form_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct Compiler {
    placeholders: usize,
    event_sized: usize,
    metadata_keys: Vec<String>,
}

impl Compiler {
    fn node(&mut self, value: &Value, at: &str, depth: usize) -> Result<Node, Invalid> {
        if depth > MAX_TEMPLATE_DEPTH {
            return Err(Invalid::new(
                at,
                format_args!("nests deeper than {MAX_TEMPLATE_DEPTH} levels"),
            ));
        }
        Ok(match value {
            Value::Object(map) => Node::Object(
                map.iter()
                    .map(|(key, child)| {
                        Ok((
                            key.clone(),
                            self.node(child, &format!("{at}.{key}"), depth + 1)?,
                        ))
                    })
                    .collect::<Result<_, Invalid>>()?,
            ),
            Value::Array(items) => Node::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(index, child)| self.node(child, &format!("{at}[{index}]"), depth + 1))
                    .collect::<Result<_, Invalid>>()?,
            ),
            Value::String(text) if text.contains("{{") => self.text(text, at)?,
            literal => Node::Literal(literal.clone()),
        })
    }

    fn text(&mut self, text: &str, at: &str) -> Result<Node, Invalid> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let mut close = after
                .find("}}")
                .ok_or_else(|| Invalid::new(at, "has a `{{` without its `}}`"))?;
            // `{{ data.x | default: {} }}` without spaces ends in `}}}`: the placeholder
            // closes at the last brace of the run.
            while after[close + 2..].starts_with('}') {
                close += 1;
            }
            pieces.push(Piece::Expr(self.expr(&after[..close], at)?));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(match pieces.as_slice() {
            [Piece::Expr(expr)] => Node::Whole(expr.clone()),
            _ => Node::Text(pieces),
        })
    }

    fn expr(&mut self, text: &str, at: &str) -> Result<Expr, Invalid> {
        self.placeholders += 1;
        let mut parts = text.split('|');
        let reference = parts.next().unwrap_or_default().trim();
        let source = parse_source(reference).map_err(|message| Invalid::new(at, message))?;
        match &source {
            Source::Data(_) | Source::Changes(_) | Source::Actor(None) => self.event_sized += 1,
            Source::Metadata(key) => self.metadata_keys.push(key.clone()),
            _ => {}
        }
        let filters = parts
            .map(|filter| parse_filter(filter.trim(), &source))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|message| Invalid::new(at, message))?;
        Ok(Expr { source, filters })
    }
}

fn parse_source(reference: &str) -> Result<Source, String> {
    let mut segments = reference.split('.');
    let head = segments.next().unwrap_or_default();
    let path: Vec<String> = segments.map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("`{reference}` has an empty path segment"));
    }
    let no_path = |source: Source| {
        if path.is_empty() {
            Ok(source)
        } else {
            Err(format!("`{head}` has no fields (in `{reference}`)"))
        }
    };
    match head {
        "id" => no_path(Source::Id),
        "type" => no_path(Source::Type),
        "tenant" => no_path(Source::Tenant),
        "version" => no_path(Source::Version),
        "occurred_at" => no_path(Source::OccurredAt),
        "event_name" => no_path(Source::EventName),
        "data" => Ok(Source::Data(path)),
        "changes" => Ok(Source::Changes(path)),
        "actor" => match path.as_slice() {
            [] => Ok(Source::Actor(None)),
            [field] => match field.as_str() {
                "id" => Ok(Source::Actor(Some(ActorField::Id))),
                "name" => Ok(Source::Actor(Some(ActorField::Name))),
                "email" => Ok(Source::Actor(Some(ActorField::Email))),
                other => Err(format!(
                    "unknown field `actor.{other}`; actors have id, name and email"
                )),
            },
            _ => Err(format!(
                "unknown field `{reference}`; actors have id, name and email"
            )),
        },
        "metadata" => match path.as_slice() {
            [key] => Ok(Source::Metadata(key.clone())),
            _ => Err(format!(
                "`{reference}` must name one metadata key, as metadata.KEY"
            )),
        },
        "secret" | "secrets" | "signing_secret" | "headers" | "endpoint" => Err(format!(
            "`{reference}` cannot be read: templates see the event and the endpoint's \
             metadata, never its secret or headers"
        )),
        "" => Err("has an empty placeholder".to_owned()),
        other => Err(format!(
            "unknown field `{other}`; templates can read {SOURCES}"
        )),
    }
}

fn parse_filter(filter: &str, source: &Source) -> Result<Filter, String> {
    let (name, argument) = match filter.split_once(':') {
        Some((name, argument)) => (name.trim(), Some(argument.trim())),
        None => (filter, None),
    };
    match (name, argument) {
        ("time", Some(layout)) => {
            if *source != Source::OccurredAt {
                return Err("the time filter applies to occurred_at only".to_owned());
            }
            Ok(Filter::Time(match layout {
                "rfc3339" => TimeLayout::Rfc3339,
                "unix" => TimeLayout::UnixSeconds,
                "unix_ms" => TimeLayout::UnixMillis,
                custom => TimeLayout::Custom(
                    time::format_description::parse_owned::<2>(custom)
                        .map_err(|e| format!("invalid time layout `{custom}`: {e}"))?,
                ),
            }))
        }
        ("time", None) => Err("the time filter needs a layout, as `time: rfc3339`".to_owned()),
        ("upper", None) => Ok(Filter::Upper),
        ("lower", None) => Ok(Filter::Lower),
        ("number", None) => Ok(Filter::Number),
        ("default", Some(literal)) => serde_json::from_str(literal)
            .map(Filter::Default)
            .map_err(|_| format!("default needs a JSON literal, got `{literal}`")),
        (other, _) => Err(format!(
            "unknown filter `{other}`; filters are time: LAYOUT, upper, lower, number, \
             default: JSON"
        )),
    }
}

fn render_node(node: &Node, event: &Event, context: RenderContext<'_>) -> Value {
    match node {
        Node::Literal(value) => value.clone(),
        Node::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(key, child)| (key.clone(), render_node(child, event, context)))
                .collect::<Map<_, _>>(),
        ),
        Node::Array(items) => Value::Array(
            items
                .iter()
                .map(|child| render_node(child, event, context))
                .collect(),
        ),
        Node::Whole(expr) => evaluate(expr, event, context),
        Node::Text(pieces) => {
            let mut text = String::new();
            for piece in pieces {
                match piece {
                    Piece::Literal(literal) => text.push_str(literal),
                    Piece::Expr(expr) => {
                        text.push_str(&form_value(&evaluate(expr, event, context)))
                    }
                }
            }
            Value::String(text)
        }
    }
}

fn evaluate(expr: &Expr, event: &Event, context: RenderContext<'_>) -> Value {
    let mut value = match &expr.source {
        Source::Id => Value::String(event.id.clone()),
        Source::Type => Value::String(event.event_type.as_str().to_owned()),
        Source::Tenant => Value::String(event.tenant.as_str().to_owned()),
        Source::Version => event.version.clone().map_or(Value::Null, Value::String),
        Source::OccurredAt => Value::String(super::payload::rfc3339(event)),
        Source::EventName => Value::String(event_name(event.event_type.as_str(), context)),
        Source::Data(path) => lookup(&event.data, path),
        Source::Changes(path) => match &event.changes {
            Some(changes) => {
                let changes = serde_json::to_value(changes).unwrap_or(Value::Null);
                lookup(&changes, path)
            }
            None => Value::Null,
        },
        Source::Actor(field) => match (&event.actor, field) {
            (None, _) => Value::Null,
            (Some(actor), None) => serde_json::to_value(actor).unwrap_or(Value::Null),
            (Some(actor), Some(ActorField::Id)) => actor.id.clone().unwrap_or(Value::Null),
            (Some(actor), Some(ActorField::Name)) => {
                actor.name.clone().map_or(Value::Null, Value::String)
            }
            (Some(actor), Some(ActorField::Email)) => {
                actor.email.clone().map_or(Value::Null, Value::String)
            }
        },
        Source::Metadata(key) => context
            .metadata
            .get(key)
            .map_or(Value::Null, |v| Value::String(v.clone())),
    };
    for filter in &expr.filters {
        value = apply(filter, value, event);
    }
    value
}

fn apply(filter: &Filter, value: Value, event: &Event) -> Value {
    match filter {
        Filter::Time(layout) => {
            let at = event.occurred_at.to_offset(time::UtcOffset::UTC);
            match layout {
                TimeLayout::Rfc3339 => Value::String(at.format(&Rfc3339).unwrap_or_default()),
                TimeLayout::UnixSeconds => Value::from(at.unix_timestamp()),
                TimeLayout::UnixMillis => {
                    Value::from(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
                }
                TimeLayout::Custom(items) => Value::String(at.format(items).unwrap_or_default()),
            }
        }
        Filter::Upper => map_string(value, |s| s.to_uppercase()),
        Filter::Lower => map_string(value, |s| s.to_lowercase()),
        Filter::Number => match &value {
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse::<u64>()
                .map_or(value.clone(), |n| Value::Number(Number::from(n))),
            _ => value,
        },
        Filter::Default(fallback) => match value {
            Value::Null => fallback.clone(),
            other => other,
        },
    }
}

fn map_string(value: Value, f: impl Fn(&str) -> String) -> Value {
    match value {
        Value::String(s) => Value::String(f(&s)),
        other => other,
    }
}

/// Follows a dotted path: object keys, or array indexes in decimal. Anything missing is
/// `null`.
fn lookup(root: &Value, path: &[String]) -> Value {
    let mut current = root;
    for segment in path {
        let next = match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(value) => current = value,
            None => return Value::Null,
        }
    }
    current.clone()
}

/// The event's name in an upper-case code: the endpoint's mapping when it has one, else
/// the last segment of the type, upper-cased (`assessment.requested` → `REQUESTED`).
pub fn event_name(event_type: &str, context: RenderContext<'_>) -> String {
    if let Some(name) = context.event_names.get(event_type) {
        return name.clone();
    }
    event_type
        .rsplit('.')
        .next()
        .unwrap_or(event_type)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing;
    use serde_json::json;
    use time::macros::datetime;

    fn event(value: Value) -> Event {
        testing::event(value, "42", datetime!(2022-03-29 07:50:42.123 UTC))
    }

    fn render(template: Value, event: &Event) -> Value {
        let metadata = BTreeMap::from([("export_key".to_owned(), "k1".to_owned())]);
        let event_names =
            BTreeMap::from([("candidate.declined".to_owned(), "NOT_INTERESTED".to_owned())]);
        Template::compile(&template).expect("compiles").render(
            event,
            RenderContext {
                metadata: &metadata,
                event_names: &event_names,
            },
        )
    }

    #[test]
    fn renders_each_source_and_filter() {
        let event = event(json!({
            "type": "candidate.declined", "version": "v2",
            "data": {"a": {"b": [10, {"c": "deep"}]}, "n": "0042", "s": "MiXed"},
            "changes": {"status": {"from": "new", "to": "lost"}},
            "actor": {"id": 7, "name": "Jo", "email": "jo@example.com"}
        }));
        let cases = [
            ("{{id}}", json!("evt_1")),
            ("{{ type }}", json!("candidate.declined")),
            ("{{tenant}}", json!("42")),
            ("{{tenant | number}}", json!(42)),
            ("{{version}}", json!("v2")),
            ("{{event_name}}", json!("NOT_INTERESTED")),
            ("{{occurred_at}}", json!("2022-03-29T07:50:42.123Z")),
            (
                "{{occurred_at | time: [year]-[month]-[day] [hour]:[minute]:[second]}}",
                json!("2022-03-29 07:50:42"),
            ),
            ("{{occurred_at | time: unix}}", json!(1_648_540_242)),
            (
                "{{occurred_at | time: unix_ms}}",
                json!(1_648_540_242_123_i64),
            ),
            ("{{data.a.b.1.c}}", json!("deep")),
            ("{{data.a.b.0}}", json!(10)),
            ("{{data.missing.x}}", Value::Null),
            ("{{data.missing | default: {}}}", json!({})),
            ("{{data.n | number}}", json!(42)),
            ("{{data.s | upper}}", json!("MIXED")),
            ("{{data.s | lower}}", json!("mixed")),
            ("{{changes.status.to}}", json!("lost")),
            ("{{actor.id}}", json!(7)),
            ("{{actor.email}}", json!("jo@example.com")),
            (
                "{{actor}}",
                json!({"id": 7, "name": "Jo", "email": "jo@example.com"}),
            ),
            ("{{metadata.export_key}}", json!("k1")),
            (
                "id={{id}}; n={{data.a.b.0}}; none={{data.x}}",
                json!("id=evt_1; n=10; none="),
            ),
            ("no placeholders", json!("no placeholders")),
        ];
        for (template, expected) in cases {
            assert_eq!(render(json!(template), &event), expected, "{template}");
        }
    }

    #[test]
    fn keeps_shape_and_literals() {
        let event = event(json!({"type": "a.b", "data": {"x": 1}}));
        let rendered = render(
            json!({"fixed": [1, true, null, "{{data.x}}"], "nested": {"y": "{{data.y}}"}}),
            &event,
        );
        assert_eq!(
            rendered,
            json!({"fixed": [1, true, null, 1], "nested": {"y": null}})
        );
    }

    #[test]
    fn default_event_names_are_upper_case_last_segments() {
        let empty = BTreeMap::new();
        let context = RenderContext {
            metadata: &empty,
            event_names: &empty,
        };
        assert_eq!(event_name("assessment.requested", context), "REQUESTED");
        assert_eq!(event_name("a.in-progress", context), "IN_PROGRESS");
        assert_eq!(event_name("single", context), "SINGLE");
    }

    #[test]
    fn rejections_name_the_place_and_the_problem() {
        let big = "x".repeat(MAX_TEMPLATE_BYTES);
        let many: Map<String, Value> = (0..=MAX_PLACEHOLDERS)
            .map(|i| (format!("k{i}"), json!("{{id}}")))
            .collect();
        let copies: Vec<Value> = (0..=MAX_EVENT_SIZED_REFERENCES)
            .map(|_| json!("{{data}}"))
            .collect();
        let deep = (0..20).fold(json!(1), |inner, _| json!([inner]));
        let cases = [
            (json!({"a": "{{dta.x}}"}), "body.a", "unknown field `dta`"),
            (
                json!({"a": ["{{secret}}"]}),
                "body.a[0]",
                "never its secret",
            ),
            (json!({"a": "{{headers.x}}"}), "body.a", "never its secret"),
            (json!({"a": "{{actor.phone}}"}), "body.a", "actor.phone"),
            (json!({"a": "{{id.x}}"}), "body.a", "has no fields"),
            (json!({"a": "{{data..x}}"}), "body.a", "empty path segment"),
            (json!({"a": "{{metadata}}"}), "body.a", "metadata.KEY"),
            (json!({"a": "{{id"}), "body.a", "without its `}}`"),
            (json!({"a": "{{}}"}), "body.a", "empty placeholder"),
            (
                json!({"t": "{{occurred_at | time: [yaer]}}"}),
                "body.t",
                "invalid time layout",
            ),
            (
                json!({"t": "{{occurred_at | time}}"}),
                "body.t",
                "needs a layout",
            ),
            (
                json!({"t": "{{id | time: unix}}"}),
                "body.t",
                "occurred_at only",
            ),
            (json!({"t": "{{id | shout}}"}), "body.t", "unknown filter"),
            (
                json!({"t": "{{id | default: nope}}"}),
                "body.t",
                "JSON literal",
            ),
            (json!({"a": big}), "body", "bytes"),
            (Value::Object(many), "body", "placeholders"),
            (Value::Array(copies), "body", "output stays bounded"),
            (deep, "body", "deeper"),
        ];
        for (template, field, message) in cases {
            let error = Template::compile(&template).expect_err(&template.to_string());
            assert!(error.field.starts_with(field), "{template}: {error}");
            assert!(error.message.contains(message), "{template}: {error}");
        }
    }

    #[test]
    fn reports_metadata_it_reads() {
        let template = Template::compile(
            &json!({"k": "{{metadata.export_key}}", "j": "{{metadata.b}}-{{metadata.export_key}}"}),
        )
        .expect("compiles");
        assert_eq!(template.metadata_keys(), ["b", "export_key"]);
    }
}
