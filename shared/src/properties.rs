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

/// `template JSON\nevent data JSON`: compiling any template returns a template or an
/// error naming a place, never panics; a compiled template renders any event without
/// panicking, to valid JSON (or a form), the same bytes every time (signatures depend
/// on it), and within the output bound or as `TooLarge`.
pub fn template_rendering(data: &[u8]) {
    use crate::domain::payload::{PayloadFormat, Purpose, RenderError, render};
    use crate::domain::template::{MAX_RENDERED_BYTES, RenderContext};
    use std::collections::BTreeMap;

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, event_data) = text.split_once('\n').unwrap_or((text, "{}"));
    let Ok(template) = serde_json::from_str::<serde_json::Value>(template) else {
        return;
    };
    let format = match PayloadFormat::from_value(serde_json::json!({"template": template})) {
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
    let data = serde_json::from_str(event_data).unwrap_or(serde_json::Value::Null);
    let message = EventMessage {
        event_type: "fuzz.event".into(),
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
    match first {
        Ok(rendered) => {
            assert!(rendered.body.len() <= MAX_RENDERED_BYTES);
            if rendered.content_type == "application/json" {
                assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(&rendered.body).is_ok(),
                    "a JSON template renders JSON"
                );
            }
        }
        Err(RenderError::TooLarge { bytes }) => assert!(bytes > MAX_RENDERED_BYTES),
    }
}
