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
use serde_json::{Number, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};
use time::format_description::OwnedFormatItem;
use time::format_description::well_known::Rfc3339;

/// Serialized size of a template's body.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
pub const MAX_TEMPLATE_DEPTH: usize = 16;
pub const MAX_PLACEHOLDERS: usize = 256;
/// References whose size the event controls: `data`, `changes` and `actor`, and every
/// path into them (`actor.name` is as long as the sender makes it). Each may copy up to
/// a whole event, so their count bounds the output; every other reference is at most a
/// few hundred bytes (identifiers, metadata, event names).
pub const MAX_EVENT_SIZED_REFERENCES: usize = 32;
/// What one rendering may produce; the renderer stops at the first byte beyond it, and
/// the delivery is dead-lettered with reason `render_failed` instead of sending
/// something the receiver cannot use.
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

    /// Writes the rendered JSON document to `out`, stopping at its limit.
    pub fn render_json(
        &self,
        event: &Event,
        context: RenderContext<'_>,
        out: &mut BoundedOutput,
    ) -> Result<(), OutputLimit> {
        write_json(&self.root, event, context, out).map_err(|_| out.passed())
    }

    /// Writes a template whose body must be an object as form fields, in template order:
    /// strings as they are, `null` as empty, anything else as compact JSON.
    pub fn render_form(
        &self,
        event: &Event,
        context: RenderContext<'_>,
        out: &mut BoundedOutput,
    ) -> Result<(), OutputLimit> {
        write_form(&self.root, event, context, &mut FormWriter::new(out)).map_err(|_| out.passed())
    }

    /// Whether the body compiles to an object (form templates need one).
    pub fn is_object(&self) -> bool {
        matches!(self.root, Node::Object(_))
    }
}

/// Where a rendering goes: bytes up to a limit. A write that would pass the limit is
/// refused, so a rendering stops at its first byte too many and never holds more than
/// the limit, however often its template copies a large value. Growth is capped at the
/// limit too, so the allocation is bounded as well as the length.
#[derive(Debug)]
pub struct BoundedOutput {
    bytes: Vec<u8>,
    limit: usize,
}

/// A rendering passed its output limit and was stopped there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rendering passed its limit of {limit} bytes")]
pub struct OutputLimit {
    pub limit: usize,
}

impl BoundedOutput {
    pub fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The memory the output holds, which a rendering can never take past its limit.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Every writer a rendering uses ends in this output, which fails only at its limit:
    /// a failed rendering is one that passed it.
    fn passed(&self) -> OutputLimit {
        OutputLimit { limit: self.limit }
    }
}

impl Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let needed = self.bytes.len() + buf.len();
        if needed > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                OutputLimit { limit: self.limit },
            ));
        }
        if needed > self.bytes.capacity() {
            let grown = self
                .bytes
                .capacity()
                .saturating_mul(2)
                .clamp(needed, self.limit);
            self.bytes.reserve_exact(grown - self.bytes.len());
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `name=value` pairs joined by `&`, each side encoded as `serde_urlencoded` does.
#[derive(Debug)]
pub struct FormWriter<'a> {
    out: &'a mut BoundedOutput,
    fields: usize,
}

impl<'a> FormWriter<'a> {
    pub fn new(out: &'a mut BoundedOutput) -> Self {
        Self { out, fields: 0 }
    }

    /// Starts a field; its value is what is written to the answer.
    pub fn field(&mut self, name: &str) -> io::Result<UrlEncoded<&mut BoundedOutput>> {
        if self.fields > 0 {
            self.out.write_all(b"&")?;
        }
        self.fields += 1;
        UrlEncoded(&mut *self.out).write_all(name.as_bytes())?;
        self.out.write_all(b"=")?;
        Ok(UrlEncoded(&mut *self.out))
    }
}

/// Form-urlencodes what passes through. The encoding is per byte, so a chunk may end
/// inside a UTF-8 sequence.
#[derive(Debug)]
pub struct UrlEncoded<W>(W);

impl<W: Write> Write for UrlEncoded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for chunk in form_urlencoded::byte_serialize(buf) {
            self.0.write_all(chunk.as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Escapes what passes through as the inside of a JSON string, byte for byte as
/// serde_json does. Only ASCII bytes are escaped, so a chunk may end inside a UTF-8
/// sequence.
struct JsonEscaped<W>(W);

impl<W: Write> Write for JsonEscaped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut plain = 0;
        for (index, &byte) in buf.iter().enumerate() {
            let control;
            let escape: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => {
                    control = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        HEX[usize::from(byte >> 4)],
                        HEX[usize::from(byte & 0xf)],
                    ];
                    &control
                }
                _ => continue,
            };
            self.0.write_all(&buf[plain..index])?;
            self.0.write_all(escape)?;
            plain = index + 1;
        }
        self.0.write_all(&buf[plain..])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A value as text, as a form field or a mixed string shows it: strings as they are,
/// `null` as nothing, anything else as compact JSON.
pub fn write_text(value: &Value, out: &mut impl Write) -> io::Result<()> {
    match value {
        Value::String(s) => out.write_all(s.as_bytes()),
        Value::Null => Ok(()),
        other => Ok(serde_json::to_writer(out, other)?),
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
            Source::Data(_) | Source::Changes(_) | Source::Actor(_) => self.event_sized += 1,
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

fn write_json(
    node: &Node,
    event: &Event,
    context: RenderContext<'_>,
    out: &mut impl Write,
) -> io::Result<()> {
    match node {
        Node::Literal(value) => serde_json::to_writer(&mut *out, value)?,
        Node::Object(fields) => {
            out.write_all(b"{")?;
            for (index, (key, child)) in fields.iter().enumerate() {
                if index > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, key)?;
                out.write_all(b":")?;
                write_json(child, event, context, out)?;
            }
            out.write_all(b"}")?;
        }
        Node::Array(items) => {
            out.write_all(b"[")?;
            for (index, child) in items.iter().enumerate() {
                if index > 0 {
                    out.write_all(b",")?;
                }
                write_json(child, event, context, out)?;
            }
            out.write_all(b"]")?;
        }
        Node::Whole(expr) => serde_json::to_writer(&mut *out, &*evaluate(expr, event, context))?,
        Node::Text(pieces) => {
            out.write_all(b"\"")?;
            write_pieces(pieces, event, context, &mut JsonEscaped(&mut *out))?;
            out.write_all(b"\"")?;
        }
    }
    Ok(())
}

fn write_form(
    root: &Node,
    event: &Event,
    context: RenderContext<'_>,
    form: &mut FormWriter<'_>,
) -> io::Result<()> {
    match root {
        Node::Object(fields) => {
            for (name, node) in fields {
                write_text_node(node, event, context, &mut form.field(name)?)?;
            }
            Ok(())
        }
        other => write_text_node(other, event, context, &mut form.field("data")?),
    }
}

/// A node as text (see [`write_text`]): what a form field holds.
fn write_text_node(
    node: &Node,
    event: &Event,
    context: RenderContext<'_>,
    out: &mut impl Write,
) -> io::Result<()> {
    match node {
        Node::Literal(value) => write_text(value, out),
        Node::Whole(expr) => write_text(&evaluate(expr, event, context), out),
        Node::Text(pieces) => write_pieces(pieces, event, context, out),
        Node::Object(_) | Node::Array(_) => write_json(node, event, context, out),
    }
}

fn write_pieces(
    pieces: &[Piece],
    event: &Event,
    context: RenderContext<'_>,
    out: &mut impl Write,
) -> io::Result<()> {
    for piece in pieces {
        match piece {
            Piece::Literal(literal) => out.write_all(literal.as_bytes())?,
            Piece::Expr(expr) => write_text(&evaluate(expr, event, context), out)?,
        }
    }
    Ok(())
}

/// A reference's value, borrowed from the event where it can be: a rendering holds at
/// most one value it made (a filter's result, `actor` or `changes` as a whole) beside
/// its output.
fn evaluate<'e>(expr: &Expr, event: &'e Event, context: RenderContext<'_>) -> Cow<'e, Value> {
    let owned = |value: Value| Cow::Owned(value);
    let null = || Cow::Owned(Value::Null);
    let mut value = match &expr.source {
        Source::Id => owned(Value::String(event.id.clone())),
        Source::Type => owned(Value::String(event.event_type.as_str().to_owned())),
        Source::Tenant => owned(Value::String(event.tenant.as_str().to_owned())),
        Source::Version => owned(event.version.clone().map_or(Value::Null, Value::String)),
        Source::OccurredAt => owned(Value::String(event.occurred_at_rfc3339())),
        Source::EventName => owned(Value::String(event_name(
            event.event_type.as_str(),
            context,
        ))),
        Source::Data(path) => lookup(&event.data, path).map_or_else(null, Cow::Borrowed),
        Source::Changes(path) => match (&event.changes, path.as_slice()) {
            (None, _) => null(),
            (Some(changes), []) => owned(serde_json::to_value(changes).unwrap_or(Value::Null)),
            (Some(changes), [field, rest @ ..]) => match (changes.get(field), rest) {
                (None, _) => null(),
                (Some(change), []) => owned(serde_json::to_value(change).unwrap_or(Value::Null)),
                (Some(change), [side, rest @ ..]) => {
                    let side = match side.as_str() {
                        "from" => Some(&change.from),
                        "to" => Some(&change.to),
                        _ => None,
                    };
                    side.and_then(|value| lookup(value, rest))
                        .map_or_else(null, Cow::Borrowed)
                }
            },
        },
        Source::Actor(field) => match (&event.actor, field) {
            (None, _) => null(),
            (Some(actor), None) => owned(serde_json::to_value(actor).unwrap_or(Value::Null)),
            (Some(actor), Some(ActorField::Id)) => {
                actor.id.as_ref().map_or_else(null, Cow::Borrowed)
            }
            (Some(actor), Some(ActorField::Name)) => {
                owned(actor.name.clone().map_or(Value::Null, Value::String))
            }
            (Some(actor), Some(ActorField::Email)) => {
                owned(actor.email.clone().map_or(Value::Null, Value::String))
            }
        },
        Source::Metadata(key) => owned(
            context
                .metadata
                .get(key)
                .map_or(Value::Null, |v| Value::String(v.clone())),
        ),
    };
    for filter in &expr.filters {
        value = apply(filter, value, event);
    }
    value
}

fn apply<'e>(filter: &Filter, value: Cow<'e, Value>, event: &Event) -> Cow<'e, Value> {
    match filter {
        Filter::Time(layout) => {
            let at = event.occurred_at.to_offset(time::UtcOffset::UTC);
            Cow::Owned(match layout {
                TimeLayout::Rfc3339 => Value::String(at.format(&Rfc3339).unwrap_or_default()),
                TimeLayout::UnixSeconds => Value::from(at.unix_timestamp()),
                TimeLayout::UnixMillis => {
                    Value::from(i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
                }
                TimeLayout::Custom(items) => Value::String(at.format(items).unwrap_or_default()),
            })
        }
        Filter::Upper => map_string(value, str::to_uppercase),
        Filter::Lower => map_string(value, str::to_lowercase),
        Filter::Number => match &*value {
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse::<u64>().map_or(value.clone(), |n| {
                    Cow::Owned(Value::Number(Number::from(n)))
                })
            }
            _ => value,
        },
        Filter::Default(fallback) => match &*value {
            Value::Null => Cow::Owned(fallback.clone()),
            _ => value,
        },
    }
}

fn map_string<'e>(value: Cow<'e, Value>, f: impl Fn(&str) -> String) -> Cow<'e, Value> {
    match &*value {
        Value::String(s) => Cow::Owned(Value::String(f(s))),
        _ => value,
    }
}

/// Follows a dotted path: object keys, or array indexes in decimal. Anything missing is
/// `None`, rendered as `null`.
fn lookup<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut current = root;
    for segment in path {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
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
        let mut out = BoundedOutput::new(MAX_RENDERED_BYTES);
        Template::compile(&template)
            .expect("compiles")
            .render_json(
                event,
                RenderContext {
                    metadata: &metadata,
                    event_names: &event_names,
                },
                &mut out,
            )
            .expect("within the limit");
        serde_json::from_slice(out.as_bytes()).expect("renders JSON")
    }

    fn no_context() -> RenderContext<'static> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        RenderContext {
            metadata: &EMPTY,
            event_names: &EMPTY,
        }
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
        let many: serde_json::Map<String, Value> = (0..=MAX_PLACEHOLDERS)
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

    /// Every reference whose size the event controls counts toward the bound, however
    /// it is written: whole, inside a mixed string, or behind a filter.
    #[test]
    fn every_event_sized_reference_counts_toward_the_bound() {
        let event_sized = [
            "data",
            "data.a.b",
            "changes",
            "changes.status",
            "changes.status.to",
            "actor",
            "actor.id",
            "actor.name",
            "actor.email",
            "actor.name | upper",
            "actor.email | default: \"\"",
        ];
        for reference in event_sized {
            let placeholder = format!("{{{{{reference}}}}}");
            let shapes = [
                json!(vec![placeholder.clone(); MAX_EVENT_SIZED_REFERENCES + 1]),
                json!({"mixed": placeholder.repeat(MAX_EVENT_SIZED_REFERENCES + 1)}),
                json!({"a": vec![placeholder.clone(); MAX_EVENT_SIZED_REFERENCES], "b": format!("x{placeholder}")}),
            ];
            for template in shapes {
                let error = Template::compile(&template).expect_err(&template.to_string());
                assert_eq!(error.field, "body", "{template}");
                assert!(error.message.contains("output stays bounded"), "{error}");
            }
            let at_the_bound = json!(vec![placeholder; MAX_EVENT_SIZED_REFERENCES]);
            Template::compile(&at_the_bound).unwrap_or_else(|e| panic!("{at_the_bound}: {e}"));
        }
        // The rest are bounded by the endpoint or the contract, whatever the event says.
        let bounded = [
            "id",
            "type",
            "tenant",
            "version",
            "occurred_at",
            "event_name",
            "metadata.k",
        ];
        for reference in bounded {
            let template = json!(vec![format!("{{{{{reference}}}}}"); MAX_PLACEHOLDERS]);
            Template::compile(&template).unwrap_or_else(|e| panic!("{reference}: {e}"));
        }
    }

    /// The amplifying template (256 copies of `actor.name`) cannot be written; at the
    /// bound, a large name stops the rendering at the limit with a typed error, and the
    /// output never holds more than the limit.
    #[test]
    fn rendering_stops_at_the_output_limit() {
        let amplifying = json!(vec!["{{actor.name}}"; MAX_PLACEHOLDERS]);
        assert!(Template::compile(&amplifying).is_err());

        let name = "n".repeat(64 * 1024);
        let event = event(json!({"type": "a.b", "data": {"s": name},
                                 "actor": {"id": [name], "name": name, "email": name}}));
        let references = [
            "actor.name",
            "actor.email",
            "actor.id",
            "actor",
            "data",
            "data.s",
        ];
        for reference in references {
            let placeholder = format!("{{{{{reference}}}}}");
            let shapes = [
                json!(vec![placeholder.clone(); MAX_EVENT_SIZED_REFERENCES]),
                json!({"text": placeholder.repeat(MAX_EVENT_SIZED_REFERENCES)}),
            ];
            for shape in shapes {
                let template = Template::compile(&shape).expect("compiles");
                for limit in [0, 10, 100_000, 1_000_000] {
                    let mut json = BoundedOutput::new(limit);
                    let result = template.render_json(&event, no_context(), &mut json);
                    assert_eq!(result, Err(OutputLimit { limit }), "{reference}");
                    assert!(json.capacity() <= limit, "{reference}: {}", json.capacity());
                    let mut form = BoundedOutput::new(limit);
                    let result = template.render_form(&event, no_context(), &mut form);
                    assert_eq!(result, Err(OutputLimit { limit }), "{reference}");
                    assert!(form.capacity() <= limit, "{reference}: {}", form.capacity());
                }
            }
        }
    }

    /// Mixed strings are escaped on the way out rather than built and serialized: the
    /// bytes are serde_json's, for every ASCII character and beyond.
    #[test]
    fn mixed_strings_are_escaped_as_serde_json_does() {
        let every_ascii: String = (0u8..=0x7f).map(char::from).collect();
        let text = format!("{every_ascii} é € 😀 \u{2028}");
        let event = event(json!({"type": "a.b", "data": {"s": text, "o": {"q": "\"\n"}}}));
        let template = Template::compile(&json!(["{{data.s}}|{{data.o}}"])).expect("compiles");
        let mut out = BoundedOutput::new(MAX_RENDERED_BYTES);
        template
            .render_json(&event, no_context(), &mut out)
            .expect("renders");
        let expected = json!([format!("{text}|{}", json!({"q": "\"\n"}))]);
        assert_eq!(
            out.as_bytes(),
            serde_json::to_vec(&expected).expect("serialize")
        );

        let form =
            Template::compile(&json!({"s": "{{data.s}}", "o": "{{data.o}}"})).expect("compiles");
        let mut out = BoundedOutput::new(MAX_RENDERED_BYTES);
        form.render_form(&event, no_context(), &mut out)
            .expect("renders");
        let expected = serde_urlencoded::to_string([
            ("s", text.as_str()),
            ("o", &json!({"q": "\"\n"}).to_string()),
        ])
        .expect("urlencoded");
        assert_eq!(out.as_bytes(), expected.as_bytes());
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
