//! Payload filters: an endpoint may ask for only the events whose `data` has given values.
//!
//! A filter maps dotted paths into `data` to one accepted value or a list of them:
//! `{"status": ["hired", "offer"], "job.department": "sales"}`. Every path must match.

use super::Invalid;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const MAX_PATHS: usize = 32;
const MAX_ACCEPTED: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Map<String, Value>", into = "Map<String, Value>")]
pub struct PayloadFilter {
    rules: Vec<(String, Vec<Value>)>,
}

impl PayloadFilter {
    pub fn parse(map: Map<String, Value>) -> Result<Self, Invalid> {
        if map.len() > MAX_PATHS {
            return Err(Invalid::new(
                "",
                format_args!("has more than {MAX_PATHS} paths"),
            ));
        }
        let mut rules = Vec::with_capacity(map.len());
        for (path, accepted) in map {
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(Invalid::new(path, "is not a dotted path into data"));
            }
            let accepted = match accepted {
                Value::Array(values) => values,
                single => vec![single],
            };
            if accepted.is_empty() || accepted.len() > MAX_ACCEPTED {
                return Err(Invalid::new(
                    path,
                    format_args!("must accept 1 to {MAX_ACCEPTED} values"),
                ));
            }
            if accepted.iter().any(|v| v.is_object() || v.is_array()) {
                return Err(Invalid::new(
                    path,
                    "accepts only strings, numbers, booleans or null",
                ));
            }
            rules.push((path, accepted));
        }
        Ok(Self { rules })
    }

    pub fn matches(&self, data: &Value) -> bool {
        self.rules.iter().all(|(path, accepted)| {
            let found = path
                .split('.')
                .try_fold(data, |node, key| node.get(key))
                .unwrap_or(&Value::Null);
            accepted.contains(found)
        })
    }
}

impl TryFrom<Map<String, Value>> for PayloadFilter {
    type Error = Invalid;
    fn try_from(map: Map<String, Value>) -> Result<Self, Invalid> {
        Self::parse(map)
    }
}

impl From<PayloadFilter> for Map<String, Value> {
    fn from(filter: PayloadFilter) -> Self {
        filter
            .rules
            .into_iter()
            .map(|(path, mut accepted)| {
                let value = if accepted.len() == 1 {
                    accepted.remove(0)
                } else {
                    Value::Array(accepted)
                };
                (path, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(value: Value) -> PayloadFilter {
        serde_json::from_value(value).expect("valid filter")
    }

    #[test]
    fn matching() {
        let f = filter(json!({"status": ["hired", "offer"], "job.department": "sales"}));
        let cases = [
            (
                json!({"status": "hired", "job": {"department": "sales"}}),
                true,
            ),
            (
                json!({"status": "offer", "job": {"department": "sales"}}),
                true,
            ),
            (
                json!({"status": "rejected", "job": {"department": "sales"}}),
                false,
            ),
            (
                json!({"status": "hired", "job": {"department": "ops"}}),
                false,
            ),
            (json!({"status": "hired"}), false),
            (json!("not an object"), false),
        ];
        for (data, expected) in cases {
            assert_eq!(f.matches(&data), expected, "{data}");
        }
        assert!(
            filter(json!({"archived": null})).matches(&json!({})),
            "absent is null"
        );
    }

    #[test]
    fn rejects_bad_rules() {
        for bad in [
            json!({"": 1}),
            json!({"a..b": 1}),
            json!({"a": []}),
            json!({"a": {"b": 1}}),
        ] {
            assert!(
                serde_json::from_value::<PayloadFilter>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
