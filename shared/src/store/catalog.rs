//! The event-type catalog: what an ATS emits, with a description and an example payload
//! that customers pick from and that template previews render.

use super::{Keyspace, StoreError, parse_json};
use crate::domain::pattern::EventType;
use crate::store::RedisConnection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventTypeEntry {
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub description: String,
    /// An example `data` for this type.
    #[serde(default)]
    pub example: Value,
}

#[derive(Debug, Clone)]
pub struct CatalogStore {
    redis: RedisConnection,
    keys: Keyspace,
}

impl CatalogStore {
    pub fn new(redis: RedisConnection, keys: Keyspace) -> Self {
        Self { redis, keys }
    }

    /// Registers or replaces an entry; true if it was new.
    pub async fn put(&self, entry: &EventTypeEntry) -> Result<bool, StoreError> {
        let added: i64 = redis::cmd("HSET")
            .arg(self.keys.event_types())
            .arg(&entry.event_type)
            .arg(serde_json::to_string(entry).unwrap_or_default())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(added == 1)
    }

    pub async fn get(&self, event_type: &EventType) -> Result<Option<EventTypeEntry>, StoreError> {
        let key = self.keys.event_types();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg(event_type.as_str())
            .query_async(&mut self.redis.clone())
            .await?;
        raw.map(|json| decode(&key, &json)).transpose()
    }

    pub async fn list(&self) -> Result<Vec<EventTypeEntry>, StoreError> {
        let key = self.keys.event_types();
        let raw: Vec<String> = redis::cmd("HVALS")
            .arg(&key)
            .query_async(&mut self.redis.clone())
            .await?;
        let mut entries = raw
            .iter()
            .map(|json| decode(&key, json))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by(|a, b| a.event_type.cmp(&b.event_type));
        Ok(entries)
    }

    pub async fn delete(&self, event_type: &EventType) -> Result<bool, StoreError> {
        let removed: i64 = redis::cmd("HDEL")
            .arg(self.keys.event_types())
            .arg(event_type.as_str())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(removed == 1)
    }
}

fn decode(key: &str, json: &str) -> Result<EventTypeEntry, StoreError> {
    parse_json(key, json)
}
