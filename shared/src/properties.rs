//! Properties that must hold for any input, checked by the cargo-fuzz targets in `fuzz/`
//! and, on the saved corpus in `shared/tests/corpus/`, by `make test`. Each panics when
//! the property is broken, which is what a fuzzer reports.

use crate::domain::event::{Event, EventMessage, Fallbacks};
use crate::domain::pattern::{EventPattern, EventType};

/// Any bytes as an event body: parsing returns a value or an error naming a field, and a
/// valid event survives a round trip through its wire form unchanged.
pub fn event_parsing(data: &[u8]) {
    let Ok(message) = serde_json::from_slice::<EventMessage>(data) else {
        return;
    };
    let fallbacks = Fallbacks {
        tenant: None,
        id: "fuzz".into(),
        occurred_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    match Event::from_message(message, fallbacks.clone()) {
        Err(invalid) => assert!(!invalid.message.is_empty(), "errors explain themselves"),
        Ok(event) => {
            let wire = serde_json::to_vec(&event).unwrap_or_default();
            let reparsed: EventMessage = match serde_json::from_slice(&wire) {
                Ok(message) => message,
                Err(error) => panic!("a valid event's wire form parses: {error}"),
            };
            match Event::from_message(reparsed, fallbacks) {
                Ok(again) => assert_eq!(event, again, "round trip changes nothing"),
                Err(invalid) => panic!("a valid event stays valid: {invalid}"),
            }
        }
    }
}

/// `pattern\nevent_type`: parsing never panics, and matching agrees with a naive
/// reference implementation of the AMQP topic rules.
pub fn pattern_matching(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, event_type) = text.split_once('\n').unwrap_or((text, ""));
    let (Ok(parsed_pattern), Ok(parsed_type)) = (
        EventPattern::parse(pattern.to_owned()),
        EventType::parse(event_type.to_owned()),
    ) else {
        return;
    };
    let pattern_words: Vec<&str> = pattern.split('.').collect();
    let words: Vec<&str> = event_type.split('.').collect();
    assert_eq!(
        parsed_pattern.matches(&parsed_type),
        reference_match(&pattern_words, &words),
        "{pattern} vs {event_type}"
    );
}

fn reference_match(pattern: &[&str], words: &[&str]) -> bool {
    match (pattern.split_first(), words.split_first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some((&"#", rest)), _) => {
            (0..=words.len()).any(|skip| reference_match(rest, &words[skip..]))
        }
        (Some(_), None) => false,
        (Some((&"*", rest)), Some((_, tail))) => reference_match(rest, tail),
        (Some((word, rest)), Some((first, tail))) => word == first && reference_match(rest, tail),
    }
}

/// `template JSON\nevent data JSON` (the template a body, or `{"content_type", "body"}`
/// when it has a `body`): compiling any template returns a template or an
/// error naming a place, never panics; a compiled template renders any event without
/// panicking, to valid JSON (or a form), the same bytes every time (signatures depend
/// on it), and within the output bound or as `TooLarge`. The event carries the data in
/// every field whose size it controls (`data`, `changes`, `actor`).
///
/// Output size: under any limit, rendering either gives the whole body (at most the
/// limit) or stops with `TooLarge` having written only a prefix of it, and the output
/// never holds more than the limit — so a rendering's memory is its limit plus the one
/// value it is copying, however often the template copies it.
pub fn template_rendering(data: &[u8]) {
    use crate::domain::event::{Actor, Change};
    use crate::domain::payload::{PayloadFormat, Purpose, RenderError, render, render_into};
    use crate::domain::template::{BoundedOutput, MAX_RENDERED_BYTES, RenderContext};
    use std::collections::BTreeMap;

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, event_data) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(template) = serde_json::from_str::<serde_json::Value>(template) else {
        return;
    };
    // A template's body, or a whole template (`{"content_type": "form", "body": …}`).
    let source = if template.get("body").is_some() {
        template
    } else {
        serde_json::json!({ "body": template })
    };
    let format = match PayloadFormat::from_value(serde_json::json!({ "template": source })) {
        Ok(format) => format,
        Err(invalid) => {
            assert!(!invalid.message.is_empty(), "errors explain themselves");
            assert!(
                invalid.field.starts_with("format"),
                "errors name a place: {invalid}"
            );
            return;
        }
    };
    let data: serde_json::Value =
        serde_json::from_str(event_data).unwrap_or(serde_json::Value::Null);
    let as_text = match &data {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let message = EventMessage {
        event_type: "fuzz.event".into(),
        changes: Some(BTreeMap::from([(
            "field".to_owned(),
            Change {
                from: data.clone(),
                to: data.clone(),
            },
        )])),
        actor: Some(Actor {
            id: Some(data.clone()),
            name: Some(as_text.clone()),
            email: Some(as_text),
        }),
        data,
        ..EventMessage::default()
    };
    let Ok(event) = Event::from_message(
        message,
        Fallbacks {
            tenant: crate::domain::event::TenantId::parse("fuzz").ok(),
            id: "fuzz".into(),
            occurred_at: time::OffsetDateTime::UNIX_EPOCH,
        },
    ) else {
        return;
    };
    let metadata: BTreeMap<String, String> = format
        .metadata_keys()
        .iter()
        .map(|key| (key.clone(), format!("value of {key}")))
        .collect();
    let event_names = BTreeMap::new();
    let context = RenderContext {
        metadata: &metadata,
        event_names: &event_names,
    };
    let first = render(&event, &format, context, Purpose::Live);
    let second = render(&event, &format, context, Purpose::Live);
    assert_eq!(first, second, "rendering is deterministic");
    let full = match first {
        Ok(rendered) => {
            assert!(rendered.body.len() <= MAX_RENDERED_BYTES);
            if rendered.content_type == "application/json" {
                assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(&rendered.body).is_ok(),
                    "a JSON template renders JSON"
                );
            }
            rendered
        }
        Err(RenderError::TooLarge { limit }) => {
            assert_eq!(limit, MAX_RENDERED_BYTES);
            return;
        }
    };
    let length = full.body.len();
    for limit in [0, length / 2, length.saturating_sub(1), length] {
        let mut out = BoundedOutput::new(limit);
        let result = render_into(&event, &format, context, Purpose::Live, &mut out);
        assert!(
            out.capacity() <= limit,
            "the output holds at most its limit"
        );
        if limit < length {
            assert_eq!(
                result,
                Err(RenderError::TooLarge { limit }),
                "stops at the limit"
            );
            assert!(
                full.body.starts_with(out.as_bytes()),
                "what was written before the limit is the body's beginning"
            );
        } else {
            assert_eq!(
                result,
                Ok(full.content_type),
                "a body within the limit renders"
            );
            assert_eq!(out.as_bytes(), full.body, "the same bytes under any limit");
        }
    }
}
