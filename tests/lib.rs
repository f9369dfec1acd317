//! The end-to-end test harness: Hookline's services started in-process against the real
//! RabbitMQ and Redis that `make test` runs, each test under its own name prefix, and
//! real HTTP receivers on loopback whose answers a test can script.
//!
//! The brokers come from `HOOKLINE_TEST_AMQP_URL` and `HOOKLINE_TEST_REDIS_URL`; without
//! them every test fails loudly rather than skipping.

pub mod collector;
pub mod proxy;
pub mod receiver;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use collector::{ExportedSpan, OtlpCollector};
pub use proxy::{Asked, RecordingProxy};
pub use receiver::{Received, Receiver};

pub const TOKEN: &str = "test-token";
/// Long enough for anything a healthy test waits on, on a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Brokers {
    pub amqp_url: String,
    pub redis_url: String,
}

impl Brokers {
    pub fn from_env() -> Self {
        let read = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the tests with `make test`, which starts RabbitMQ and Redis")
            })
        };
        Self {
            amqp_url: read("HOOKLINE_TEST_AMQP_URL"),
            redis_url: read("HOOKLINE_TEST_REDIS_URL"),
        }
    }
}

/// Starts a Hookline for one test. Settings are the binaries' defaults plus what the
/// test overrides, with receivers on loopback allowed and short retry steps.
#[derive(Debug)]
pub struct HooklineBuilder {
    overrides: HashMap<String, String>,
    deliverers: usize,
}

impl Default for HooklineBuilder {
    fn default() -> Self {
        let overrides = [
            ("HOOKLINE__API__TOKEN", TOKEN),
            ("HOOKLINE__HTTP__LISTEN", "127.0.0.1:0"),
            ("HOOKLINE__ADMIN__LISTEN", "127.0.0.1:0"),
            ("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true"),
            ("HOOKLINE__DELIVERY__RETRY_SCHEDULE", "100ms,100ms"),
            ("HOOKLINE__DELIVERY__TIMEOUT", "3s"),
            ("HOOKLINE__DELIVERY__ENDPOINT_CACHE_TTL", "50ms"),
            ("HOOKLINE__DELIVERY__DEFER_DELAY", "100ms"),
            ("HOOKLINE__RETRY__POLL_INTERVAL", "20ms"),
            ("HOOKLINE__RETRY__LEASE", "10s"),
            ("HOOKLINE__SHUTDOWN__GRACE", "5s"),
            ("HOOKLINE__LOG__FILTER", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        Self {
            overrides,
            deliverers: 1,
        }
    }
}

impl HooklineBuilder {
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.overrides.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn retry_schedule(self, schedule: &str) -> Self {
        self.setting("HOOKLINE__DELIVERY__RETRY_SCHEDULE", schedule)
    }

    /// Another Redis than the test instance's (a cluster or Sentinel URL).
    pub fn redis_url(self, url: &str) -> Self {
        self.setting("HOOKLINE__REDIS__URL", url)
    }

    pub fn deliverers(mut self, count: usize) -> Self {
        self.deliverers = count;
        self
    }

    pub async fn start(self) -> Hookline {
        let brokers = Brokers::from_env();
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut overrides = self.overrides;
        overrides.insert("HOOKLINE__PREFIX".into(), prefix.clone());
        overrides
            .entry("HOOKLINE__AMQP__URL".into())
            .or_insert_with(|| brokers.amqp_url.clone());
        overrides
            .entry("HOOKLINE__REDIS__URL".into())
            .or_insert_with(|| brokers.redis_url.clone());

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ingest_settings =
            hookline_ingest::settings::Settings::from_defaults_with(overrides.clone())
                .expect("ingest settings");
        // In-process: no spans exported (the fault tests export them from the binaries).
        let _logs = hookline_shared::telemetry::init(
            &ingest_settings.log,
            &Default::default(),
            "hookline-tests",
        );
        let partitions = ingest_settings.amqp.partitions;
        let ingest = hookline_ingest::Ingest::bind(ingest_settings)
            .await
            .expect("bind ingest");
        let api = ingest.api_addr();
        let ingest_admin = ingest.admin_addr();
        let stop = shutdown.clone();
        tasks.spawn(async move { ingest.run(stop).await.expect("ingest ran") });

        let mut hookline = Hookline {
            prefix,
            partitions,
            brokers,
            api,
            ingest_admin,
            deliverer_admins: Vec::new(),
            overrides,
            // The tests' own calls never go through a proxy from the environment: the
            // egress tests run an installation with proxy variables set.
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("HTTP client"),
            shutdown,
            tasks,
        };
        for _ in 0..self.deliverers {
            hookline.spawn_deliverer(&[]).await;
        }
        for admin in std::iter::once(hookline.ingest_admin).chain(hookline.deliverer_admins.clone())
        {
            hookline.wait_ready(admin).await;
        }
        hookline
    }
}

#[derive(Debug)]
pub struct Hookline {
    pub prefix: String,
    /// Delivery queues (`amqp.partitions`) of this installation.
    pub partitions: u16,
    pub brokers: Brokers,
    pub api: SocketAddr,
    pub ingest_admin: SocketAddr,
    pub deliverer_admins: Vec<SocketAddr>,
    pub http: reqwest::Client,
    overrides: HashMap<String, String>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A JSON answer from the API.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The request was refused as invalid: 422, naming `field`. `context` says which
    /// case of a table failed.
    #[track_caller]
    pub fn assert_invalid(&self, field: &str, context: &str) {
        assert_eq!(self.status, 422, "{context}: {}", self.body);
        assert_eq!(
            self.body["error"]["field"], field,
            "{context}: {}",
            self.body
        );
    }
}

impl Hookline {
    pub fn builder() -> HooklineBuilder {
        HooklineBuilder::default()
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    async fn wait_ready(&self, admin: SocketAddr) {
        let url = format!("http://{admin}/readyz");
        eventually("service ready", || async {
            self.http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.api, path)
    }

    /// Sends a request with the test token and parses the JSON answer (null if empty).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("API reachable");
        answer(response).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Calls the API with another bearer token (or none).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.expect("API reachable")).await
    }

    /// GETs `path` until its JSON body satisfies `done`; returns that body. Fails the
    /// test with the last body after `PATIENCE`.
    pub async fn get_until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let answer = self.get(path).await;
            if answer.status == 200 && done(&answer.body) {
                return answer.body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never reached the expected state; last: {} {}",
                answer.status,
                answer.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post_event(&self, tenant: &str, event: Value) -> Answer {
        self.call(
            reqwest::Method::POST,
            &format!("/v1/tenants/{tenant}/events"),
            Some(event),
        )
        .await
    }

    /// Creates an endpoint and returns it (with its secret); panics unless 201.
    pub async fn create_endpoint(&self, tenant: &str, endpoint: Value) -> Value {
        let answer = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/endpoints"),
                Some(endpoint),
            )
            .await;
        assert_eq!(answer.status, 201, "creating endpoint: {}", answer.body);
        answer.body
    }

    pub async fn amqp(&self) -> Connection {
        Connection::connect(&self.brokers.amqp_url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable")
    }

    /// Publishes straight to the events exchange as an ATS would, with a plain AMQP
    /// client and confirms — not through Hookline's publisher.
    pub async fn publish_direct(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let confirm = channel
            .basic_publish(
                format!("{}.events", self.prefix).as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            matches!(confirm, Confirmation::Ack(None)),
            "broker confirmed and routed: {confirm:?}"
        );
        let _ = connection.close(200, "done".into()).await;
    }

    /// Takes `count` records off the dead-letter queue, waiting for them to arrive.
    pub async fn dead_letters(&self, count: usize) -> Vec<Value> {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        let queue = format!("{}.dead-letter", self.prefix);
        let mut records = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while records.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} dead letters arrived: {records:?}",
                records.len()
            );
            match channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                Ok(Some(message)) => {
                    records.push(
                        serde_json::from_slice(&message.delivery.data)
                            .expect("dead letter is JSON"),
                    );
                    message
                        .delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                }
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        let _ = connection.close(200, "done".into()).await;
        records
    }

    /// Starts one more deliverer with this installation's settings and `extra` ones,
    /// and waits until it is ready. Returns its admin address.
    pub async fn start_deliverer(&mut self, extra: &[(&str, &str)]) -> SocketAddr {
        let admin = self.spawn_deliverer(extra).await;
        self.wait_ready(admin).await;
        admin
    }

    async fn spawn_deliverer(&mut self, extra: &[(&str, &str)]) -> SocketAddr {
        let mut overrides = self.overrides.clone();
        for (key, value) in extra {
            overrides.insert((*key).to_owned(), (*value).to_owned());
        }
        let settings = hookline_deliverer::settings::Settings::from_defaults_with(overrides)
            .expect("deliverer settings");
        let deliverer = hookline_deliverer::Deliverer::bind(settings)
            .await
            .expect("bind deliverer");
        let admin = deliverer.admin_addr();
        self.deliverer_admins.push(admin);
        let stop = self.shutdown.clone();
        self.tasks
            .spawn(async move { deliverer.run(stop).await.expect("deliverer ran") });
        admin
    }

    /// Messages ready in all the delivery queues (every partition).
    pub async fn deliveries_depth(&self) -> u32 {
        let mut total = 0;
        for partition in 0..self.partitions {
            total += self.queue_depth(&format!("deliveries.{partition}")).await;
        }
        total
    }

    /// Whether `{prefix}.{suffix}` exists.
    pub async fn queue_exists(&self, suffix: &str) -> bool {
        self.passive_declare(suffix).await.is_ok()
    }

    /// Messages ready in a queue of this installation (by its suffix, e.g. `dead-letter`).
    pub async fn queue_depth(&self, suffix: &str) -> u32 {
        self.passive_declare(suffix)
            .await
            .expect("queue exists")
            .message_count()
    }

    async fn passive_declare(&self, suffix: &str) -> Result<lapin::Queue, lapin::Error> {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                format!("{}.{suffix}", self.prefix).as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await;
        let _ = connection.close(200, "done".into()).await;
        queue
    }

    /// Every value this installation keeps in Redis — each key of its prefix read by its
    /// type (strings, hashes' fields and values, sets, sorted sets, lists, streams) — as
    /// text, keys included.
    pub async fn redis_dump(&self) -> Vec<String> {
        let mut redis = self.redis().await;
        let mut keys: Vec<String> = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let (next, found): (String, Vec<String>) = redis::cmd("SCAN")
                .arg(&cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await
                .expect("SCAN");
            keys.extend(found);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        let mut values = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .expect("TYPE");
            let read = match kind.as_str() {
                "string" => redis::cmd("GET").arg(&key).clone(),
                "hash" => redis::cmd("HGETALL").arg(&key).clone(),
                "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
                "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).clone(),
                "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
                "stream" => {
                    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg("+")
                        .query_async(&mut redis)
                        .await
                        .expect("XRANGE");
                    values.extend(
                        entries
                            .into_iter()
                            .flat_map(|(_, fields)| fields)
                            .flat_map(|(field, value)| [field, value]),
                    );
                    values.push(key);
                    continue;
                }
                // Gone between SCAN and TYPE.
                _ => continue,
            };
            let found: redis::Value = read.query_async(&mut redis).await.expect("read");
            collect_strings(&found, &mut values);
            values.push(key);
        }
        values
    }

    /// The body of every message waiting in this installation's queues (delivery
    /// partitions and both dead-letter queues), read without taking them.
    pub async fn queued_bodies(&self) -> Vec<String> {
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        let mut queues: Vec<String> = (0..self.partitions)
            .map(|partition| format!("{}.deliveries.{partition}", self.prefix))
            .collect();
        queues.push(format!("{}.dead-letter", self.prefix));
        queues.push(format!("{}.dead-letter.index", self.prefix));
        let mut bodies = Vec::new();
        for queue in queues {
            while let Ok(Some(message)) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                bodies.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
            }
        }
        // Unacked: closing hands every message back to its queue.
        let _ = connection.close(200, "done".into()).await;
        bodies
    }

    /// This installation's Redis keys, named as Hookline names them.
    pub fn keys(&self) -> hookline_shared::store::Keyspace {
        hookline_shared::store::Keyspace::new(&self.prefix)
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.brokers.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis reachable")
    }

    /// Every delivery in the retry pool — retries, held and parked deliveries, claimed
    /// or not — as (delivery id `{event}:{endpoint}`, due time in unix ms), read from
    /// every shard's lanes.
    pub async fn retry_pool(&self) -> Vec<(String, i64)> {
        use hookline_shared::store::retries::SHARDS;
        let keys = self.keys();
        let mut redis = self.redis().await;
        let mut pool = Vec::new();
        for shard in 0..SHARDS {
            for priority in ["realtime", "bulk"] {
                let lanes: Vec<String> = redis::AsyncCommands::zrange(
                    &mut redis,
                    keys.retry_lanes(shard, priority),
                    0,
                    -1,
                )
                .await
                .expect("lanes");
                for lane in lanes {
                    let due: Vec<(String, i64)> = redis::AsyncCommands::zrange_withscores(
                        &mut redis,
                        keys.retry_lane(shard, &lane),
                        0,
                        -1,
                    )
                    .await
                    .expect("lane");
                    pool.extend(due);
                }
            }
        }
        pool
    }

    /// Reads one metric sample (sum over matching label sets) from an admin port.
    pub async fn metric(&self, admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics text");
        hookline_tools::scrape::sum(&text, name, labels)
    }

    /// Stops every service, waits for them to exit, and removes this test's queues,
    /// exchanges and Redis keys.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(PATIENCE, self.tasks.wait())
            .await
            .expect("services stop within the grace period");
        let connection = self.amqp().await;
        let channel = connection.create_channel().await.expect("channel");
        let queues = ["deliveries", "dead-letter", "dead-letter.index"]
            .map(str::to_owned)
            .into_iter()
            .chain(
                (0..hookline_shared::settings::MAX_PARTITIONS.min(16))
                    .map(|i| format!("deliveries.{i}")),
            );
        for queue in queues {
            let _ = channel
                .queue_delete(
                    format!("{}.{queue}", self.prefix).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        for exchange in ["events", "partitions", "dead-letter"] {
            let _ = channel
                .exchange_delete(
                    format!("{}.{exchange}", self.prefix).as_str().into(),
                    Default::default(),
                )
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
        let mut redis = self.redis().await;
        for pattern in [format!("{}:*", self.prefix)] {
            let keys: Vec<String> = {
                let mut iter: redis::AsyncIter<String> =
                    redis::AsyncCommands::scan_match(&mut redis, &pattern)
                        .await
                        .expect("scan");
                let mut keys = Vec::new();
                while let Some(key) = iter.next().await {
                    keys.push(key.expect("key"));
                }
                keys
            };
            if !keys.is_empty() {
                let _: () = redis::AsyncCommands::del(&mut redis, keys)
                    .await
                    .expect("del");
            }
        }
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer { status, body }
}

/// Polls `condition` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(what, PATIENCE, condition).await;
}

/// [`eventually`] with a limit of its own, for waits longer than one test's, such as a
/// chaos run draining. Polls every 20 ms within [`PATIENCE`]; beyond it every 100 ms, as
/// a long wait's conditions read the brokers that the run is loading.
pub async fn eventually_within<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let pause = if limit > PATIENCE {
        Duration::from_millis(100)
    } else {
        Duration::from_millis(20)
    };
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
    }
}

/// An independent Standard Webhooks verifier, written from the specification rather
/// than with Hookline's signing code: HMAC-SHA256 over `{id}.{timestamp}.{body}` with the
/// base64-decoded part of `whsec_…`, any `v1,` entry matching.
pub fn verify_signature(secret: &str, received: &Received) -> bool {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let engine = base64::engine::general_purpose::STANDARD;
    let Ok(key) = engine.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let (Some(id), Some(timestamp), Some(signatures)) = (
        received.header("webhook-id"),
        received.header("webhook-timestamp"),
        received.header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&key) else {
        return false;
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&received.body);
    let expected = engine.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .any(|entry| entry.strip_prefix("v1,") == Some(expected.as_str()))
}

fn collect_strings(value: &redis::Value, into: &mut Vec<String>) {
    match value {
        redis::Value::BulkString(bytes) => into.push(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => into.push(text.clone()),
        redis::Value::Int(number) => into.push(number.to_string()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                collect_strings(item, into);
            }
        }
        redis::Value::Map(pairs) => {
            for (field, value) in pairs {
                collect_strings(field, into);
                collect_strings(value, into);
            }
        }
        _ => {}
    }
}
