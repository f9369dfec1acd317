//! Event types and the AMQP-topic patterns endpoints subscribe with.
//!
//! An event type is dot-separated lowercase words (`profile.parsing.success`). A pattern
//! follows RabbitMQ topic rules: `*` stands for exactly one word, `#` for zero or more, so a
//! pattern means the same to Hookline as to the broker's own bindings.

use super::Invalid;
use serde::{Deserialize, Serialize};
use std::fmt;

const MAX_LEN: usize = 255;
const MAX_WORDS: usize = 16;

fn is_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_shape(value: &str, allow_wildcards: bool) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_LEN {
        return Err(format!("must be at most {MAX_LEN} characters"));
    }
    let words: Vec<&str> = value.split('.').collect();
    if words.len() > MAX_WORDS {
        return Err(format!("must have at most {MAX_WORDS} words"));
    }
    for word in words {
        let wildcard = allow_wildcards && (word == "*" || word == "#");
        if !wildcard && !is_word(word) {
            return Err(if word.is_empty() {
                "has an empty word (leading, trailing or doubled '.')".into()
            } else if allow_wildcards {
                format!(
                    "word {word:?} must be lowercase letters, digits, '_' or '-', or a lone '*' or '#'"
                )
            } else {
                format!("word {word:?} must be lowercase letters, digits, '_' or '-'")
            });
        }
    }
    Ok(())
}

/// A validated event type such as `application.status.updated`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventType(String);

impl EventType {
    pub fn parse(value: impl Into<String>) -> Result<Self, Invalid> {
        let value = value.into();
        check_shape(&value, false).map_err(|m| Invalid::new("type", m))?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventType {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl From<EventType> for String {
    fn from(value: EventType) -> Self {
        value.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription pattern such as `profile.*.success` or `job.#`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventPattern(String);

impl EventPattern {
    pub fn parse(value: impl Into<String>) -> Result<Self, Invalid> {
        let value = value.into();
        check_shape(&value, true).map_err(|m| Invalid::new("", m))?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, event_type: &EventType) -> bool {
        let pattern: Vec<&str> = self.0.split('.').collect();
        let words: Vec<&str> = event_type.as_str().split('.').collect();
        matches_words(&pattern, &words)
    }
}

/// Topic matching with backtracking over `#`; patterns are at most 16 words, so the
/// worst case stays tiny.
fn matches_words(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => (0..=words.len()).any(|skip| matches_words(rest, &words[skip..])),
        Some((&first, rest)) => match words.split_first() {
            Some((word, remaining)) if first == "*" || first == *word => {
                matches_words(rest, remaining)
            }
            _ => false,
        },
    }
}

impl TryFrom<String> for EventPattern {
    type Error = Invalid;
    fn try_from(value: String) -> Result<Self, Invalid> {
        Self::parse(value)
    }
}

impl From<EventPattern> for String {
    fn from(value: EventPattern) -> Self {
        value.0
    }
}

impl fmt::Display for EventPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_shapes() {
        let cases = [
            ("profile.parsing.success", true),
            ("candidate.interested", true),
            ("job", true),
            ("job_v2.status-changed", true),
            ("a..b", false),
            (".a", false),
            ("a.", false),
            ("", false),
            ("Profile.parsing", false),
            ("a b", false),
            ("job.*", false),
            ("job.#", false),
        ];
        for (value, ok) in cases {
            assert_eq!(EventType::parse(value).is_ok(), ok, "{value:?}");
        }
        assert!(EventType::parse("a.".repeat(200)).is_err(), "over-long");
    }

    #[test]
    fn pattern_shapes() {
        let cases = [
            ("profile.*.success", true),
            ("#", true),
            ("job.#", true),
            ("*.*", true),
            ("job.#x", false),
            ("job.**", false),
            ("a..b", false),
            ("", false),
            ("a b", false),
        ];
        for (value, ok) in cases {
            assert_eq!(EventPattern::parse(value).is_ok(), ok, "{value:?}");
        }
    }

    #[test]
    fn topic_matching_follows_amqp_rules() {
        let cases = [
            ("profile.*.success", "profile.parsing.success", true),
            ("profile.*.success", "profile.parsing.error", false),
            ("profile.*.success", "profile.success", false),
            ("profile.*.success", "profile.a.b.success", false),
            ("job.#", "job", true),
            ("job.#", "job.storing.success", true),
            ("job.#", "jobs.storing", false),
            ("#", "anything.at.all", true),
            ("#.success", "profile.parsing.success", true),
            ("#.success", "success", true),
            ("#.success", "profile.error", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("*", "one", true),
            ("*", "one.two", false),
            ("candidate.interested", "candidate.interested", true),
            ("candidate.interested", "candidate.declined", false),
            ("#.#", "x.y", true),
        ];
        for (pattern, event_type, expected) in cases {
            let pattern = EventPattern::parse(pattern).expect("valid pattern");
            let event_type = EventType::parse(event_type).expect("valid type");
            assert_eq!(
                pattern.matches(&event_type),
                expected,
                "{pattern} ~ {event_type}"
            );
        }
    }
}
