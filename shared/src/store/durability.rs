//! What Hookline needs of Redis's own configuration, checked once at start: scheduled
//! retries, leases and the dead-letter index live in Redis, so a server that evicts keys
//! or keeps nothing across a restart can lose them without any error.

use super::RedisConnection;
use std::collections::HashMap;

/// Redis settings that put Hookline's state at risk, from `CONFIG GET`'s answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Risk {
    /// Keys may be evicted under memory pressure; only `noeviction` refuses writes
    /// instead, which Hookline waits out.
    Evicts,
    /// Neither AOF nor RDB snapshots: a restart empties Redis.
    NoPersistence,
}

impl Risk {
    pub fn advice(self) -> &'static str {
        match self {
            Self::Evicts => {
                "Redis may evict keys (maxmemory-policy is not noeviction): scheduled retries and leases could vanish; set maxmemory-policy noeviction"
            }
            Self::NoPersistence => {
                "Redis keeps nothing across a restart (appendonly no, save \"\"): every scheduled retry would be lost; set appendonly yes with appendfsync everysec"
            }
        }
    }
}

/// The risks in a server's configuration. Settings the server did not report (a
/// managed Redis may refuse `CONFIG GET`) are not guessed at.
pub fn risks(config: &HashMap<String, String>) -> Vec<Risk> {
    let mut risks = Vec::new();
    if config
        .get("maxmemory-policy")
        .is_some_and(|policy| policy != "noeviction")
    {
        risks.push(Risk::Evicts);
    }
    if let (Some(appendonly), Some(save)) = (config.get("appendonly"), config.get("save"))
        && appendonly != "yes"
        && save.trim().is_empty()
    {
        risks.push(Risk::NoPersistence);
    }
    risks
}

/// Reads the settings [`risks`] looks at; `None` when the server refuses `CONFIG GET`.
pub async fn read_config(redis: &RedisConnection) -> Option<HashMap<String, String>> {
    let mut config = HashMap::new();
    for parameter in ["maxmemory-policy", "appendonly", "save"] {
        let answer: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(parameter)
            .query_async(&mut redis.clone())
            .await;
        config.extend(answer.ok()?);
    }
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn risks_table() {
        let cases = [
            (
                config(&[
                    ("maxmemory-policy", "noeviction"),
                    ("appendonly", "yes"),
                    ("save", ""),
                ]),
                vec![],
            ),
            (
                config(&[
                    ("maxmemory-policy", "allkeys-lru"),
                    ("appendonly", "yes"),
                    ("save", ""),
                ]),
                vec![Risk::Evicts],
            ),
            (
                config(&[
                    ("maxmemory-policy", "volatile-ttl"),
                    ("appendonly", "no"),
                    ("save", "3600 1"),
                ]),
                vec![Risk::Evicts],
            ),
            (
                config(&[
                    ("maxmemory-policy", "noeviction"),
                    ("appendonly", "no"),
                    ("save", ""),
                ]),
                vec![Risk::NoPersistence],
            ),
            (config(&[]), vec![]),
        ];
        for (config, expected) in cases {
            assert_eq!(risks(&config), expected, "{config:?}");
        }
    }
}
