//! One Redis connection type for every deployment shape, chosen by the URL:
//!
//! - `redis://` / `rediss://` — one server (TLS with `rediss`): a multiplexed connection
//!   that reconnects in the background;
//! - `redis+cluster://[:password@]host:port,host:port…` (`rediss+cluster://` for TLS) —
//!   Redis Cluster: commands are routed by key slot; keys one script touches share a hash
//!   tag, so every script runs on one node;
//! - `redis+sentinel://[:password@]host:port,host:port…/service[/db]`
//!   (`rediss+sentinel://` for TLS to the servers) — the master Sentinel names: resolved at
//!   connect, and again after any connection error or a `READONLY` answer (a failover).
//!
//! The stores are written against [`RedisConnection`] and do not know which it is.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
            Self::Sentinel(_) => "RedisConnection::Sentinel",
        })
    }
}

/// What a URL asks for, parsed without connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    Single(String),
    /// Node URLs (`redis://…` or `rediss://…`, each with the password).
    Cluster(Vec<String>),
    Sentinel {
        /// Sentinel URLs (`redis://host:port`).
        sentinels: Vec<String>,
        service: String,
        password: Option<String>,
        db: i64,
        tls: bool,
    },
}

/// Parses the multi-host forms; anything else goes to the client as a single server.
pub fn parse_url(url: &str) -> Result<Topology, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        "must start with redis://, rediss://, redis+cluster:// or redis+sentinel://".to_owned()
    })?;
    let (kind, tls) = match scheme {
        "redis" | "rediss" | "unix" | "redis+unix" => return Ok(Topology::Single(url.to_owned())),
        "redis+cluster" => ("cluster", false),
        "rediss+cluster" => ("cluster", true),
        "redis+sentinel" => ("sentinel", false),
        "rediss+sentinel" => ("sentinel", true),
        other => return Err(format!("unknown scheme {other:?}")),
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let password = credentials.map(|c| c.rsplit_once(':').map_or(c, |(_, p)| p).to_owned());
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Err("names no host".to_owned());
    }
    let auth = password
        .as_ref()
        .map(|p| format!(":{p}@"))
        .unwrap_or_default();
    if kind == "cluster" {
        let node_scheme = if tls { "rediss" } else { "redis" };
        return Ok(Topology::Cluster(
            hosts
                .iter()
                .map(|host| format!("{node_scheme}://{auth}{host}"))
                .collect(),
        ));
    }
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let service = parts
        .next()
        .ok_or_else(|| {
            "a sentinel URL needs the service name: redis+sentinel://hosts/service".to_owned()
        })?
        .to_owned();
    let db = match parts.next() {
        Some(db) => db
            .parse()
            .map_err(|_| format!("database {db:?} is not a number"))?,
        None => 0,
    };
    Ok(Topology::Sentinel {
        sentinels: hosts.iter().map(|host| format!("redis://{host}")).collect(),
        service,
        password,
        db,
        tls,
    })
}

impl RedisConnection {
    pub async fn connect(
        url: &str,
        response_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, RedisError> {
        let invalid = |message: String| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "bad Redis URL",
                message,
            ))
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(2);
        match parse_url(url).map_err(invalid)? {
            Topology::Single(url) => {
                let client = redis::Client::open(url)?;
                Ok(Self::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Topology::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes)
                    .response_timeout(response_timeout)
                    .connection_timeout(connect_timeout)
                    .build()?;
                Ok(Self::Cluster(client.get_async_connection().await?))
            }
            Topology::Sentinel {
                sentinels,
                service,
                password,
                db,
                tls,
            } => {
                let mut info = redis::RedisConnectionInfo::default().set_db(db);
                if let Some(password) = password {
                    info = info.set_password(password);
                }
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                if tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    sentinels,
                    service,
                    Some(node),
                    SentinelServerType::Master,
                )?;
                Ok(Self::Sentinel(
                    SentinelConnection::connect(client, config).await?,
                ))
            }
        }
    }

    fn shape(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::Single(connection) => connection,
            Self::Cluster(connection) => connection,
            Self::Sentinel(connection) => connection,
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.shape().req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.shape().req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
            Self::Sentinel(connection) => connection.current().get_db(),
        }
    }
}

/// The master Sentinel names, found again after a failover.
#[derive(Clone)]
pub struct SentinelConnection {
    client: Arc<tokio::sync::Mutex<SentinelClient>>,
    // A std RwLock: held to clone or replace the manager, never across an await.
    current: Arc<RwLock<ConnectionManager>>,
    config: ConnectionManagerConfig,
}

impl std::fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SentinelConnection")
    }
}

impl SentinelConnection {
    async fn connect(
        mut client: SentinelClient,
        config: ConnectionManagerConfig,
    ) -> Result<Self, RedisError> {
        let master = client.async_get_client().await?;
        let manager = ConnectionManager::new_with_config(master, config.clone()).await?;
        Ok(Self {
            client: Arc::new(tokio::sync::Mutex::new(client)),
            current: Arc::new(RwLock::new(manager)),
            config,
        })
    }

    fn current(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the sentinels for the master again; keeps the old connection if they cannot
    /// say (the next failing command tries again).
    async fn rediscover(&self) {
        let mut client = self.client.lock().await;
        let Ok(master) = client.async_get_client().await else {
            return;
        };
        if let Ok(manager) = ConnectionManager::new_with_config(master, self.config.clone()).await {
            *self.current.write().unwrap_or_else(|p| p.into_inner()) = manager;
        }
    }
}

/// Errors after which the master may have moved.
fn may_have_failed_over(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.code() == Some("READONLY")
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.current().req_packed_command(cmd).await;
            if let Err(error) = &result
                && may_have_failed_over(error)
            {
                self.rediscover().await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.current().req_packed_commands(cmd, offset, count).await;
            if let Err(error) = &result
                && may_have_failed_over(error)
            {
                self.rediscover().await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_topology() {
        assert_eq!(
            parse_url("redis://127.0.0.1:6379/0"),
            Ok(Topology::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            parse_url("rediss+cluster://:pw@a:7000,b:7001"),
            Ok(Topology::Cluster(vec![
                "rediss://:pw@a:7000".into(),
                "rediss://:pw@b:7001".into()
            ]))
        );
        assert_eq!(
            parse_url("redis+sentinel://s1:26379,s2:26379/mymaster/2"),
            Ok(Topology::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                service: "mymaster".into(),
                password: None,
                db: 2,
                tls: false,
            })
        );
        assert!(
            parse_url("redis+sentinel://s1:26379").is_err(),
            "service required"
        );
        assert!(parse_url("redis+cluster://").is_err());
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("127.0.0.1:6379").is_err());
    }
}
