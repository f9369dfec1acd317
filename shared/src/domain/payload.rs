//! What a subscriber receives: the body for each payload format.
//!
//! Rendering is pure and happens once per (event, format), never once per attempt: the
//! deliverer signs the same bytes on every retry of a delivery.

use super::Invalid;
use super::event::Event;
use super::template::{
    self, BoundedOutput, FormWriter, MAX_RENDERED_BYTES, OutputLimit, RenderContext, Template,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write;
use std::sync::{Arc, LazyLock};

/// How an endpoint's deliveries look. Presets serialize as their name (`"json"`), a
/// template as `{"template": {"content_type", "body"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Hookline's envelope: `{"id","type","tenant","timestamp","version"?,"data","changes"?}`.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`: `type`, `id`, `timestamp`, then each top-level
    /// key of `data`, objects and arrays as compact JSON.
    Form,
    /// `{"event": "REQUESTED", "data": {…}}`: an upper-case event code and the data.
    EventData,
    /// `{"time", "user_*", "company_id", "export_key", "event", "data", "changes"}`.
    Company,
    /// `{"id", "type", "version", "dateOccurred", "data"}`.
    ResourceEvent,
    /// A candidate's interested/declined form: every field present, `null` when the
    /// form did not ask for it.
    CandidateForm,
    Template(TemplateFormat),
}

/// A template as the endpoint owner wrote it, with its compiled form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "TemplateSource", into = "TemplateSource")]
pub struct TemplateFormat {
    source: TemplateSource,
    compiled: Arc<Template>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSource {
    #[serde(default)]
    pub content_type: TemplateContentType,
    pub body: Value,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateContentType {
    #[default]
    Json,
    /// The body must be an object; each key becomes a form field.
    Form,
}

impl PartialEq for TemplateFormat {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl TryFrom<TemplateSource> for TemplateFormat {
    type Error = Invalid;
    fn try_from(source: TemplateSource) -> Result<Self, Invalid> {
        let compiled = Template::compile(&source.body)?;
        if source.content_type == TemplateContentType::Form && !compiled.is_object() {
            return Err(Invalid::new(
                "body",
                "must be an object when content_type is form: each key is a field",
            ));
        }
        Ok(Self {
            source,
            compiled: Arc::new(compiled),
        })
    }
}

impl From<TemplateFormat> for TemplateSource {
    fn from(format: TemplateFormat) -> Self {
        format.source
    }
}

macro_rules! preset {
    ($file:literal) => {
        LazyLock::new(|| {
            let body: Value = serde_json::from_str(include_str!(concat!("presets/", $file)))
                .expect(concat!("preset ", $file, " is JSON"));
            Template::compile(&body).expect(concat!("preset ", $file, " compiles"))
        })
    };
}

static EVENT_DATA: LazyLock<Template> = preset!("event_data.json");
static COMPANY: LazyLock<Template> = preset!("company.json");
static RESOURCE_EVENT: LazyLock<Template> = preset!("resource_event.json");
static CANDIDATE_FORM: LazyLock<Template> = preset!("candidate_form.json");

impl PayloadFormat {
    pub const PRESETS: [&'static str; 6] = [
        "json",
        "form",
        "event_data",
        "company",
        "resource_event",
        "candidate_form",
    ];

    /// Reads a format as the API takes it, naming the broken rule's place in `format…`.
    pub fn from_value(value: Value) -> Result<Self, Invalid> {
        match value {
            Value::String(name) => serde_json::from_value(Value::String(name.clone()))
                .ok()
                .filter(|format: &Self| !matches!(format, Self::Template(_)))
                .ok_or_else(|| {
                    Invalid::new(
                        "format",
                        format_args!(
                            "unknown preset `{name}`; presets are {}, or use {{\"template\": …}}",
                            Self::PRESETS.join(", ")
                        ),
                    )
                }),
            Value::Object(mut map) if map.len() == 1 && map.contains_key("template") => {
                let source: TemplateSource =
                    serde_json::from_value(map.remove("template").unwrap_or_default()).map_err(
                        |e| Invalid::new("format.template", format_args!("is not a template: {e}")),
                    )?;
                TemplateFormat::try_from(source)
                    .map(Self::Template)
                    .map_err(|e| e.within("format.template"))
            }
            _ => Err(Invalid::new(
                "format",
                "must be a preset name or {\"template\": {\"body\": …}}",
            )),
        }
    }

    fn renderer(&self) -> Renderer<'_> {
        match self {
            Self::Json => Renderer::Envelope,
            Self::Form => Renderer::Fields,
            Self::EventData => Renderer::Json(&EVENT_DATA),
            Self::Company => Renderer::Json(&COMPANY),
            Self::ResourceEvent => Renderer::Json(&RESOURCE_EVENT),
            Self::CandidateForm => Renderer::Json(&CANDIDATE_FORM),
            Self::Template(format) => match format.source.content_type {
                TemplateContentType::Json => Renderer::Json(&format.compiled),
                TemplateContentType::Form => Renderer::Form(&format.compiled),
            },
        }
    }

    /// Endpoint metadata keys this format reads; the endpoint must define each.
    pub fn metadata_keys(&self) -> &[String] {
        match self.renderer() {
            Renderer::Json(template) | Renderer::Form(template) => template.metadata_keys(),
            Renderer::Envelope | Renderer::Fields => &[],
        }
    }
}

enum Renderer<'a> {
    Envelope,
    Fields,
    Json(&'a Template),
    Form(&'a Template),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedPayload {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// Stopped at the limit: the whole body would have been larger.
    #[error("the body passes {limit} bytes, the most one delivery carries")]
    TooLarge { limit: usize },
}

impl From<OutputLimit> for RenderError {
    fn from(OutputLimit { limit }: OutputLimit) -> Self {
        Self::TooLarge { limit }
    }
}

/// Marks a delivery made by the "send test event" button rather than by the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Live,
    Test,
}

#[derive(Serialize)]
struct JsonEnvelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    tenant: &'a str,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<&'a str>,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<&'a std::collections::BTreeMap<String, super::event::Change>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    test: bool,
}

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// The body a receiver gets, at most [`MAX_RENDERED_BYTES`]. Test deliveries carry
/// `"test": true` in Hookline's own envelope only: preset and template bodies keep the
/// exact shape their receivers parse.
pub fn render(
    event: &Event,
    format: &PayloadFormat,
    context: RenderContext<'_>,
    purpose: Purpose,
) -> Result<RenderedPayload, RenderError> {
    let mut out = BoundedOutput::new(MAX_RENDERED_BYTES);
    let content_type = render_into(event, format, context, purpose, &mut out)?;
    Ok(RenderedPayload {
        content_type,
        body: out.into_bytes(),
    })
}

/// Renders into `out`, stopping as soon as the body passes its limit; answers the
/// content type.
pub fn render_into(
    event: &Event,
    format: &PayloadFormat,
    context: RenderContext<'_>,
    purpose: Purpose,
    out: &mut BoundedOutput,
) -> Result<&'static str, RenderError> {
    let too_large = RenderError::TooLarge { limit: out.limit() };
    match format.renderer() {
        Renderer::Envelope => {
            let envelope = JsonEnvelope {
                id: &event.id,
                event_type: event.event_type.as_str(),
                tenant: event.tenant.as_str(),
                timestamp: event.occurred_at_rfc3339(),
                version: event.version.as_deref(),
                data: &event.data,
                changes: event.changes.as_ref(),
                test: purpose == Purpose::Test,
            };
            // Serializing strings and JSON values fails only when the output is full.
            serde_json::to_writer(&mut *out, &envelope).map_err(|_| too_large)?;
            Ok(JSON)
        }
        Renderer::Fields => {
            write_fields(event, purpose, &mut FormWriter::new(out)).map_err(|_| too_large)?;
            Ok(FORM)
        }
        Renderer::Form(template) => {
            template.render_form(event, context, out)?;
            Ok(FORM)
        }
        Renderer::Json(template) => {
            template.render_json(event, context, out)?;
            Ok(JSON)
        }
    }
}

fn write_fields(event: &Event, purpose: Purpose, form: &mut FormWriter<'_>) -> std::io::Result<()> {
    form.field("type")?
        .write_all(event.event_type.as_str().as_bytes())?;
    form.field("id")?.write_all(event.id.as_bytes())?;
    form.field("timestamp")?
        .write_all(event.occurred_at_rfc3339().as_bytes())?;
    if purpose == Purpose::Test {
        form.field("test")?.write_all(b"true")?;
    }
    match &event.data {
        Value::Object(map) => {
            for (key, value) in map {
                template::write_text(value, &mut form.field(key)?)?;
            }
        }
        Value::Null => {}
        other => template::write_text(other, &mut form.field("data")?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::MAX_EVENT_SIZED_REFERENCES;
    use crate::domain::testing;
    use serde_json::json;
    use std::collections::BTreeMap;
    use time::macros::datetime;

    fn event(value: Value) -> Event {
        testing::event(value, "acme", datetime!(2026-05-04 10:20:30 UTC))
    }

    fn no_context() -> RenderContext<'static> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        RenderContext {
            metadata: &EMPTY,
            event_names: &EMPTY,
        }
    }

    #[test]
    fn json_envelope() {
        let cases = [
            (
                json!({"type": "candidate.interested", "data": {"a": 1}}),
                Purpose::Live,
                json!({"id": "evt_1", "type": "candidate.interested", "tenant": "acme",
                       "timestamp": "2026-05-04T10:20:30Z", "data": {"a": 1}}),
            ),
            (
                json!({"type": "application.status.updated", "version": "3", "data": {},
                       "changes": {"status": {"from": "new", "to": "hired"}}}),
                Purpose::Live,
                json!({"id": "evt_1", "type": "application.status.updated", "tenant": "acme",
                       "timestamp": "2026-05-04T10:20:30Z", "version": "3", "data": {},
                       "changes": {"status": {"from": "new", "to": "hired"}}}),
            ),
            (
                json!({"type": "hookline.ping", "data": null}),
                Purpose::Test,
                json!({"id": "evt_1", "type": "hookline.ping", "tenant": "acme",
                       "timestamp": "2026-05-04T10:20:30Z", "data": null, "test": true}),
            ),
        ];
        for (input, purpose, expected) in cases {
            let rendered = render(&event(input), &PayloadFormat::Json, no_context(), purpose)
                .expect("renders");
            assert_eq!(rendered.content_type, "application/json");
            let body: Value = serde_json::from_slice(&rendered.body).expect("json body");
            assert_eq!(body, expected);
        }
    }

    #[test]
    fn form_fields_follow_data_keys() {
        let rendered = render(
            &event(json!({"type": "profile.parsing.success", "data": {
                "origin": "api", "message": "done", "profile": {"key": "k 1", "tags": [1]}
            }})),
            &PayloadFormat::Form,
            no_context(),
            Purpose::Live,
        )
        .expect("renders");
        assert_eq!(rendered.content_type, "application/x-www-form-urlencoded");
        // Keys keep the order the ATS sent them in (serde_json's preserve_order).
        assert_eq!(
            String::from_utf8(rendered.body).expect("utf-8"),
            "type=profile.parsing.success&id=evt_1&timestamp=2026-05-04T10%3A20%3A30Z\
             &origin=api&message=done&profile=%7B%22key%22%3A%22k+1%22%2C%22tags%22%3A%5B1%5D%7D"
        );
    }

    #[test]
    fn formats_read_from_the_api_name_their_problem() {
        for name in PayloadFormat::PRESETS {
            let format = PayloadFormat::from_value(json!(name)).expect(name);
            assert_eq!(
                serde_json::to_value(&format).expect("serialize"),
                json!(name)
            );
        }
        let template = json!({"template": {"body": {"e": "{{type}}"}}});
        let format = PayloadFormat::from_value(template.clone()).expect("template");
        assert_eq!(
            serde_json::to_value(&format).expect("serialize"),
            json!({"template": {"content_type": "json", "body": {"e": "{{type}}"}}})
        );
        let cases = [
            (json!("xml"), "format", "unknown preset"),
            (
                json!({"template": "{{id}}"}),
                "format.template",
                "not a template",
            ),
            (
                json!({"template": {"body": {"a": "{{nope}}"}}}),
                "format.template.body.a",
                "unknown field",
            ),
            (
                json!({"template": {"content_type": "form", "body": ["{{id}}"]}}),
                "format.template.body",
                "must be an object",
            ),
            (json!({"other": {}}), "format", "preset name"),
        ];
        for (value, field, message) in cases {
            let error = PayloadFormat::from_value(value.clone()).expect_err(&value.to_string());
            assert_eq!(error.field, field, "{value}");
            assert!(error.message.contains(message), "{value}: {error}");
        }
    }

    #[test]
    fn stored_templates_round_trip() {
        let format = PayloadFormat::from_value(
            json!({"template": {"content_type": "form", "body": {"a": "{{id}}"}}}),
        )
        .expect("template");
        let stored = serde_json::to_string(&format).expect("serialize");
        let back: PayloadFormat = serde_json::from_str(&stored).expect("deserialize");
        assert_eq!(back, format);
        assert!(
            serde_json::from_str::<PayloadFormat>(r#"{"template": {"body": "{{secret}}"}}"#)
                .is_err()
        );
    }

    #[test]
    fn form_templates_keep_template_order_and_print_nulls_empty() {
        let format =
            PayloadFormat::from_value(json!({"template": {"content_type": "form", "body": {
                "z": "{{type}}", "a": "{{data.missing}}", "obj": "{{data}}"
            }}}))
            .expect("template");
        let rendered = render(
            &event(json!({"type": "a.b", "data": {"k": [1]}})),
            &format,
            no_context(),
            Purpose::Live,
        )
        .expect("renders");
        assert_eq!(rendered.content_type, "application/x-www-form-urlencoded");
        assert_eq!(
            String::from_utf8(rendered.body).expect("utf-8"),
            "z=a.b&a=&obj=%7B%22k%22%3A%5B1%5D%7D"
        );
    }

    /// Every format, fed an event whose every event-controlled field is large: with any
    /// limit below the whole body the rendering fails with `TooLarge`, having written
    /// only a prefix of the body and never holding more than the limit.
    #[test]
    fn rendering_stops_at_the_limit_in_every_format() {
        let big = "x".repeat(16 * 1024);
        let event = event(json!({
            "type": "a.b",
            "data": {"s": big, "candidate": {"first_name": big}},
            "changes": {"s": {"from": big, "to": big}},
            "actor": {"id": big, "name": big, "email": big}
        }));
        let template = |content_type: &str, body: Value| {
            PayloadFormat::from_value(
                json!({"template": {"content_type": content_type, "body": body}}),
            )
            .expect("template")
        };
        let mut formats: Vec<PayloadFormat> = PayloadFormat::PRESETS
            .iter()
            .map(|name| PayloadFormat::from_value(json!(name)).expect(name))
            .collect();
        for reference in [
            "data",
            "changes",
            "actor",
            "actor.id",
            "actor.name",
            "actor.email",
        ] {
            let copies = vec![format!("{{{{{reference}}}}}"); MAX_EVENT_SIZED_REFERENCES];
            formats.push(template("json", json!(copies)));
            formats.push(template("json", json!({"mixed": copies.concat()})));
            let (half, other_half) = copies.split_at(MAX_EVENT_SIZED_REFERENCES / 2);
            formats.push(template(
                "form",
                json!({"a": half.concat(), "b": other_half}),
            ));
        }
        let metadata = BTreeMap::from([("export_key".to_owned(), "k".to_owned())]);
        let empty = BTreeMap::new();
        let context = RenderContext {
            metadata: &metadata,
            event_names: &empty,
        };
        for format in formats {
            let full = render(&event, &format, context, Purpose::Live).expect("within 4 MiB");
            let length = full.body.len();
            for limit in [0, 1, 100, length / 2, length - 1] {
                let mut out = BoundedOutput::new(limit);
                let result = render_into(&event, &format, context, Purpose::Live, &mut out);
                assert_eq!(result, Err(RenderError::TooLarge { limit }), "{format:?}");
                assert!(
                    out.capacity() <= limit,
                    "{format:?} held {}",
                    out.capacity()
                );
                assert!(full.body.starts_with(out.as_bytes()), "{format:?}");
            }
            let mut exact = BoundedOutput::new(length);
            let content_type = render_into(&event, &format, context, Purpose::Live, &mut exact)
                .expect("fits exactly");
            assert_eq!(content_type, full.content_type);
            assert_eq!(exact.into_bytes(), full.body, "{format:?}");
        }
    }

    /// The amplification a template could reach before references to `actor` fields were
    /// counted: 32 copies of a 255 KB name is 8 MB, refused without being written out.
    #[test]
    fn a_body_past_the_bound_is_refused_at_the_limit() {
        let format = PayloadFormat::from_value(json!({"template": {"body": {
            "names": vec!["{{actor.name}}"; MAX_EVENT_SIZED_REFERENCES]
        }}}))
        .expect("template");
        let event = event(json!({"type": "a.b", "data": {},
                                 "actor": {"name": "n".repeat(255 * 1024)}}));
        let mut out = BoundedOutput::new(MAX_RENDERED_BYTES);
        let result = render_into(&event, &format, no_context(), Purpose::Live, &mut out);
        assert_eq!(
            result,
            Err(RenderError::TooLarge {
                limit: MAX_RENDERED_BYTES
            })
        );
        assert!(out.capacity() <= MAX_RENDERED_BYTES);
    }

    #[test]
    fn presets_compile_under_the_template_limits() {
        let presets = [
            include_str!("presets/event_data.json"),
            include_str!("presets/company.json"),
            include_str!("presets/resource_event.json"),
            include_str!("presets/candidate_form.json"),
        ];
        for preset in presets {
            let body: Value = serde_json::from_str(preset).expect("preset is JSON");
            Template::compile(&body).unwrap_or_else(|error| panic!("{error}: {preset}"));
        }
    }

    /// The documented examples in docs/formats: each preset reproduces its example.
    const VECTORS: [&str; 8] = [
        include_str!("../../../docs/formats/json.json"),
        include_str!("../../../docs/formats/form.json"),
        include_str!("../../../docs/formats/form_template.json"),
        include_str!("../../../docs/formats/event_data.json"),
        include_str!("../../../docs/formats/company.json"),
        include_str!("../../../docs/formats/resource_event.json"),
        include_str!("../../../docs/formats/candidate_form.json"),
        include_str!("../../../docs/formats/candidate_form_declined.json"),
    ];

    #[test]
    fn presets_reproduce_their_documented_examples() {
        for vector in VECTORS {
            let vector: Value = serde_json::from_str(vector).expect("vector is JSON");
            let format =
                PayloadFormat::from_value(vector["endpoint"]["format"].clone()).expect("format");
            let metadata: BTreeMap<String, String> =
                serde_json::from_value(vector["endpoint"]["metadata"].clone()).unwrap_or_default();
            let event = testing::event(
                vector["event"].clone(),
                vector["tenant"].as_str().expect("tenant"),
                datetime!(2026-01-01 00:00:00 UTC),
            );
            let empty = BTreeMap::new();
            let context = RenderContext {
                metadata: &metadata,
                event_names: &empty,
            };
            let rendered = render(&event, &format, context, Purpose::Live).expect("renders");
            match vector["expected_form"].as_str() {
                Some(form) => assert_eq!(
                    String::from_utf8(rendered.body).expect("utf-8"),
                    form,
                    "{}",
                    vector["description"]
                ),
                None => {
                    let body: Value = serde_json::from_slice(&rendered.body).expect("json body");
                    assert_eq!(body, vector["expected"], "{}", vector["description"]);
                }
            }
        }
    }
}
