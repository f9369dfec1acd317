//! Redis: the key layout and the stores both binaries use.
//!
//! Every key starts with the installation prefix. Keys that one script touches together
//! share a hash tag (`{…}`), so the layout works unchanged on Redis Cluster.

pub mod activity;
pub mod catalog;
pub mod connection;
pub mod dead_letters;
pub mod durability;
pub mod endpoints;
pub mod erasure;
pub mod health;
pub mod keys;
pub mod ordered;
pub mod quotas;
pub mod rate;
pub mod replicas;
pub mod retention;
pub mod retries;
pub mod sealing;
pub mod sequences;

use crate::settings::RedisSettings;
use secrecy::ExposeSecret;

pub use connection::RedisConnection;
pub use keys::Keyspace;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("Redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("stored value at {key} is not readable")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("a sealed value at {key} cannot be opened")]
    Sealed {
        key: String,
        #[source]
        source: sealing::SealError,
    },
    #[error("the tenant already has the maximum of {max} endpoints")]
    QuotaExceeded { max: u32 },
}

/// A JSON value stored at `key`, parsed; one that does not parse is `Corrupt`.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    key: &str,
    json: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

/// A value stored sealed (or plain, from before sealing), opened and parsed.
pub(crate) fn open_json<T: serde::de::DeserializeOwned>(
    sealer: &sealing::Sealer,
    key: &str,
    stored: &str,
) -> Result<T, StoreError> {
    let json = sealer.open(stored).map_err(|source| StoreError::Sealed {
        key: key.to_owned(),
        source,
    })?;
    parse_json(key, &json)
}

impl StoreError {
    /// True when Redis could not be reached or did not answer in time, as opposed to
    /// a command or data error: the caller should wait and retry, or answer 503.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Redis(error) => {
                error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || matches!(
                        error.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                    )
            }
            _ => false,
        }
    }

    /// True when Redis answers but refuses writes: out of memory under `noeviction`
    /// (`OOM`), or unable to persist (`MISCONF`). Like an outage, it is waited out (the
    /// deliverer holds the work) or answered 503; it is counted apart because its fix is
    /// Redis's memory or disk, not the network.
    pub fn is_refusing_writes(&self) -> bool {
        let Self::Redis(error) = self else {
            return false;
        };
        // A pipeline or a transaction reports the errors of its commands one by one.
        error.clone().into_server_errors().is_some_and(|errors| {
            errors
                .iter()
                .any(|(_, error)| matches!(error.code(), "OOM" | "MISCONF"))
        })
    }
}

/// Connects as the URL says: one server, a cluster or through Sentinel (see
/// [`connection`]). A command that hits a broken connection fails (it is not replayed):
/// every write Hookline makes is idempotent so that callers can simply retry.
pub async fn connect(settings: &RedisSettings) -> Result<RedisConnection, StoreError> {
    Ok(RedisConnection::connect(
        settings.url.expose_secret(),
        settings.response_timeout,
        settings.connect_timeout,
    )
    .await?)
}
