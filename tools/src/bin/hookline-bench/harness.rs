//! What the scenarios drive: Hookline's release binaries as child processes, the
//! receiver and the load generators in this process, the raw broker ceiling, and the
//! CPU and memory each process used.

use crate::drain::{self, Drain};
use crate::report::quantile;
use crate::{Args, Brokers};
use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::StatusCode;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hookline_shared::domain::event::Priority;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

const TOKEN: &str = "bench-token";
const API: &str = "127.0.0.1:18080";
const INGEST_ADMIN: &str = "127.0.0.1:19090";
const DELIVERER_ADMIN: &str = "127.0.0.1:19091";
/// Enough to drain any scenario on a healthy run; a stuck run fails instead of hanging.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

fn padding() -> String {
    "x".repeat(880)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn queue_arguments(queue_type: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    arguments
}

/// Confirms the ceiling's publisher keeps outstanding, as the reference figures were
/// measured.
pub const CEILING_IN_FLIGHT: usize = 1000;

pub struct Ceiling {
    /// Messages/s from the first publish to the last ack.
    pub rate: f64,
    /// CPU µs per message, by process.
    pub cpu_per_message: Vec<(&'static str, f64)>,
}

/// Raw broker ceiling: publish with pipelined confirms and consume with one manual ack per
/// message, together, on the queue type and prefetch Hookline uses.
pub async fn ceiling(
    brokers: &Brokers,
    args: &Args,
    in_flight_limit: usize,
) -> anyhow::Result<Ceiling> {
    let queue = format!("bench-ceiling-{}", std::process::id());
    let consumer_connection =
        Connection::connect(&brokers.amqp_url, ConnectionProperties::default()).await?;
    let publisher_connection =
        Connection::connect(&brokers.amqp_url, ConnectionProperties::default()).await?;
    let consumer_channel = consumer_connection.create_channel().await?;
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    consumer_channel
        .queue_declare(
            queue.as_str().into(),
            options,
            queue_arguments(&args.queue_type),
        )
        .await?;
    consumer_channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let total = args.ceiling_messages;
    let consuming = tokio::spawn(async move {
        let mut seen = 0;
        while seen < total {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    seen += 1;
                }
                Some(Err(error)) => return Err(anyhow::Error::from(error)),
                None => bail!("consumer ended early"),
            }
        }
        Ok(Instant::now())
    });
    let channel = publisher_connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'x'; 1024];
    let cpu_before = ceiling_cpu();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..total {
        if in_flight.len() >= in_flight_limit {
            in_flight.next().await.transpose()?;
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        in_flight.push(confirm);
    }
    while let Some(confirm) = in_flight.next().await {
        confirm?;
    }
    let finished = tokio::time::timeout(DRAIN_LIMIT, consuming).await???;
    let rate = total as f64 / finished.duration_since(started).as_secs_f64();
    let cpu_per_message = cpu_per_item(cpu_before, ceiling_cpu(), total);
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = publisher_connection.close(200, "done".into()).await;
    let _ = consumer_connection.close(200, "done".into()).await;
    Ok(Ceiling {
        rate,
        cpu_per_message,
    })
}

/// CPU µs each process spent per item between two snapshots of the same processes.
fn cpu_per_item(
    before: Vec<(&'static str, u64)>,
    after: Vec<(&'static str, u64)>,
    items: usize,
) -> Vec<(&'static str, f64)> {
    after
        .into_iter()
        .zip(before)
        .map(|((name, after), (_, before))| {
            (name, after.saturating_sub(before) as f64 / items as f64)
        })
        .collect()
}

/// What the ceiling is charged: the broker, and this process as its publisher and
/// consumer.
fn ceiling_cpu() -> Vec<(&'static str, u64)> {
    vec![
        ("rabbitmq", cpu_us(broker_pid("rabbitmq"))),
        ("client", cpu_us(Some(std::process::id()))),
    ]
}

/// What a receiver keeps of each delivery it counts, beyond the count and the time of the
/// last one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Keep {
    #[default]
    Count,
    /// When each arrived. The body is not parsed, so the receiver costs about what a bare
    /// count does and the run it measures stays comparable with (2).
    Arrivals,
    /// When each was sent (the body's `sent_at_us`, same clock) and when it arrived.
    SentAndArrivals,
}

/// One delivery a receiver kept, in µs since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Arrival {
    sent_us: Option<u64>,
    received_us: u64,
}

/// A receiver that counts, timestamps, optionally keeps each arrival, or hangs.
#[derive(Debug, Default)]
struct Counter {
    received: AtomicUsize,
    target: AtomicUsize,
    last_us: AtomicU64,
    keep: Keep,
    arrivals: Mutex<Vec<Arrival>>,
    reached: Notify,
}

impl Counter {
    fn keeping(keep: Keep) -> Self {
        Self {
            keep,
            ..Self::default()
        }
    }

    fn count(&self, body: &[u8]) {
        let received_us = now_us();
        if self.keep != Keep::Count {
            let sent_us = (self.keep == Keep::SentAndArrivals)
                .then(|| serde_json::from_slice::<Value>(body).ok())
                .flatten()
                .and_then(|value| value["data"]["sent_at_us"].as_u64());
            self.arrivals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arrival {
                    sent_us,
                    received_us,
                });
        }
        self.last_us.store(received_us, Ordering::Relaxed);
        let seen = self.received.fetch_add(1, Ordering::Relaxed) + 1;
        if seen >= self.target.load(Ordering::Relaxed) {
            self.reached.notify_waiters();
        }
    }
}

/// The subscribers' side: `/ok` counts and answers 204, `/hang` never answers, anything
/// else answers 204 uncounted. Bare hyper rather than a router, for the same reason as
/// [`IngestConnection`]: it shares the cores with what it measures.
async fn start_receiver(counter: Arc<Counter>) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let counter = counter.clone();
            let service = hyper::service::service_fn(
                move |request: axum::http::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        match path.as_str() {
                            "/ok" => counter.count(&body),
                            "/hang" => std::future::pending::<()>().await,
                            _ => {}
                        }
                        let mut answer =
                            axum::http::Response::new(http_body_util::Empty::<Bytes>::new());
                        *answer.status_mut() = StatusCode::NO_CONTENT;
                        Ok::<_, hyper::Error>(answer)
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    Ok(format!("http://{addr}"))
}

impl Counter {
    fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn wait_for(&self, target: usize) -> anyhow::Result<()> {
        self.target.store(target, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        loop {
            let reached = self.reached.notified();
            if self.received.load(Ordering::Relaxed) >= target {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, reached).await.is_err() {
                bail!(
                    "only {} of {target} deliveries arrived",
                    self.received.load(Ordering::Relaxed)
                );
            }
        }
    }
}

struct Services {
    ingest: Child,
    /// None until [`Services::start_deliverer`]: a scenario may let a backlog build up
    /// before anything consumes it.
    deliverer: Option<Child>,
    http: reqwest::Client,
    prefix: String,
    scenario: String,
}

/// Ingest and the deliverer, both ready.
async fn start_services(
    brokers: &Brokers,
    args: &Args,
    scenario: &str,
) -> anyhow::Result<Services> {
    let mut services = start_ingest(brokers, args, scenario).await?;
    services.start_deliverer(brokers, args).await?;
    Ok(services)
}

/// Ingest alone, ready. It declares the whole topology, so the events it accepts wait in
/// the deliveries queue until [`Services::start_deliverer`].
async fn start_ingest(brokers: &Brokers, args: &Args, scenario: &str) -> anyhow::Result<Services> {
    let prefix = format!("bench-{scenario}-{}", std::process::id());
    let services = Services {
        ingest: spawn_service("hookline-ingest", brokers, args, scenario, &prefix)?,
        deliverer: None,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?,
        prefix,
        scenario: scenario.to_owned(),
    };
    services.wait_ready(INGEST_ADMIN).await?;
    Ok(services)
}

/// Starts one of Hookline's binaries with the bench's settings, its log under
/// `target/bench/logs`.
fn spawn_service(
    binary: &str,
    brokers: &Brokers,
    args: &Args,
    scenario: &str,
    prefix: &str,
) -> anyhow::Result<Child> {
    let logs = PathBuf::from("target/bench/logs");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::File::create(logs.join(format!("{scenario}-{binary}.log")))?;
    Command::new(args.bin_dir.join(binary))
        .env("HOOKLINE__PREFIX", prefix)
        .env("HOOKLINE__AMQP__URL", &brokers.amqp_url)
        .env("HOOKLINE__REDIS__URL", &brokers.redis_url)
        .env("HOOKLINE__AMQP__QUEUE_TYPE", &args.queue_type)
        .env("HOOKLINE__AMQP__PREFETCH", args.prefetch.to_string())
        .env("HOOKLINE__API__TOKEN", TOKEN)
        .env("HOOKLINE__HTTP__LISTEN", API)
        .env("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true")
        .env("HOOKLINE__LOG__FILTER", "warn")
        .env(
            "HOOKLINE__ADMIN__LISTEN",
            if binary == "hookline-ingest" {
                INGEST_ADMIN
            } else {
                DELIVERER_ADMIN
            },
        )
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {binary} (build with cargo build --release)"))
}

impl Services {
    /// Starts the deliverer beside the running ingest and waits until it is ready, which
    /// includes its consumer on the deliveries queue.
    async fn start_deliverer(&mut self, brokers: &Brokers, args: &Args) -> anyhow::Result<()> {
        if self.deliverer.is_some() {
            bail!("the deliverer of {} is already running", self.scenario);
        }
        self.deliverer = Some(spawn_service(
            "hookline-deliverer",
            brokers,
            args,
            &self.scenario,
            &self.prefix,
        )?);
        self.wait_ready(DELIVERER_ADMIN).await
    }

    async fn wait_ready(&self, admin: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = self.http.get(format!("http://{admin}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{admin} did not become ready; see target/bench/logs");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Services {
    async fn create_endpoint(&self, tenant: &str, url: String) -> anyhow::Result<()> {
        self.create_endpoint_with(tenant, url, json!({})).await
    }

    /// Creates an endpoint with `extra` fields (format, metadata) beside url and types.
    async fn create_endpoint_with(
        &self,
        tenant: &str,
        url: String,
        extra: Value,
    ) -> anyhow::Result<()> {
        let mut body = json!({"url": url, "event_types": ["profile.#"]});
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        let response = self
            .http
            .post(format!("http://{API}/v1/tenants/{tenant}/endpoints"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await?;
        if response.status() != StatusCode::CREATED {
            bail!(
                "creating endpoint: {} {}",
                response.status(),
                response.text().await?
            );
        }
        Ok(())
    }

    /// Peak RSS of (ingest, deliverer), then SIGTERM and wait.
    async fn stop(mut self, brokers: &Brokers) -> anyhow::Result<(u64, u64)> {
        let deliverer = self.deliverer.as_ref().and_then(Child::id);
        let peaks = (peak_rss(self.ingest.id()), peak_rss(deliverer));
        for child in std::iter::once(&self.ingest).chain(self.deliverer.as_ref()) {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        for child in std::iter::once(&mut self.ingest).chain(self.deliverer.as_mut()) {
            if tokio::time::timeout(Duration::from_secs(40), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        let connection =
            Connection::connect(&brokers.amqp_url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for queue in ["deliveries", "dead-letter", "dead-letter.index"] {
            let _ = channel
                .queue_delete(
                    format!("{}.{queue}", self.prefix).as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
        let client = redis::Client::open(brokers.redis_url.as_str())?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await?;
        Ok(peaks)
    }
}

fn peak_rss(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// A second tenant beside the measured one, with its own endpoint and a share of the
/// traffic on top of the measured events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Second {
    None,
    /// Its endpoint never answers (until the delivery timeout).
    Hanging,
    /// Its endpoint answers at once: the control for `Hanging`.
    Answering,
}

/// One in this many events is the second tenant's.
const SECOND_TENANT_SHARE: usize = 20;

pub enum Traffic {
    Http {
        endpoints: usize,
        events: usize,
        second: Second,
        formats: Formats,
    },
    /// (2) to one ordered endpoint, the events spread over `keys` ordering keys.
    Ordered {
        events: usize,
        keys: usize,
    },
    Amqp {
        events: usize,
    },
    /// (2) sent as `POST …/events/batch` of `size` events each, from `clients`
    /// closed-loop clients.
    Batch {
        events: usize,
        size: usize,
        clients: usize,
    },
}

/// What the healthy tenant's endpoints ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formats {
    /// Hookline's envelope everywhere: one rendering per event.
    Json,
    /// Every preset plus two templates across the endpoints: one rendering per distinct
    /// format per event.
    Mixed,
}

/// Formats cycled over the endpoints of the mixed fan-out, with what each needs.
fn mixed_format(index: usize) -> Value {
    let formats = [
        json!({"format": "json"}),
        json!({"format": "form"}),
        json!({"format": "event_data"}),
        json!({"format": "company", "metadata": {"export_key": "bench"}}),
        json!({"format": "resource_event"}),
        json!({"format": "candidate_form"}),
        json!({"format": {"template": {"body": {
            "event": "{{event_name}}", "at": "{{occurred_at | time: unix}}",
            "profile": "{{data.profile}}", "tenant": "{{tenant}}"}}}}),
        json!({"format": {"template": {"content_type": "form", "body": {
            "type": "{{type}}", "message": "{{data.message}}", "profile": "{{data.profile}}"}}}}),
    ];
    formats[index % formats.len()].clone()
}

pub struct Throughput {
    pub events_per_s: f64,
    pub deliveries_per_s: f64,
    pub ingest_rss: u64,
    pub deliverer_rss: u64,
    /// CPU µs per event, by process, while the scenario ran.
    pub cpu_per_event: Vec<(&'static str, f64)>,
}

/// User + system CPU time of a process so far, in µs.
fn cpu_us(pid: Option<u32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and
    // 13th of them, in clock ticks (USER_HZ, 100 on Linux).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks * 10_000
}

fn broker_pid(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("target/brokers/bench/pids/{name}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The processes whose CPU a scenario is charged: Hookline, the brokers, and this
/// process (load generator and receiver).
fn cpu_snapshot(services: &Services) -> Vec<(&'static str, u64)> {
    vec![
        ("ingest", cpu_us(services.ingest.id())),
        (
            "deliverer",
            cpu_us(services.deliverer.as_ref().and_then(Child::id)),
        ),
        ("rabbitmq", cpu_us(broker_pid("rabbitmq"))),
        ("redis", cpu_us(broker_pid("redis"))),
        (
            "load_generator_and_receiver",
            cpu_us(Some(std::process::id())),
        ),
    ]
}

fn event_body(tenant: Option<&str>) -> Value {
    let mut body = json!({"type": "profile.parsing.success", "data": {"sent_at_us": now_us(), "padding": padding()}});
    if let Some(tenant) = tenant {
        body["tenant"] = tenant.into();
    }
    body
}

/// The same body as [`event_body`] without a tenant, written straight to bytes: the load
/// generator shares the machine with what it measures, so it should cost little.
fn event_bytes(padding: &str, shape: Shape, index: usize) -> Vec<u8> {
    let extra = match shape {
        Shape::Realtime => String::new(),
        Shape::Bulk => r#","priority":"bulk""#.to_owned(),
        Shape::Keyed(keys) => format!(r#","ordering_key":"k{}""#, index % keys.max(1)),
    };
    format!(
        r#"{{"type":"profile.parsing.success","data":{{"sent_at_us":{},"padding":"{padding}"}}{extra}}}"#,
        now_us()
    )
    .into_bytes()
}

/// What the load generator's events carry beside the usual fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Realtime,
    Bulk,
    /// An `ordering_key`, one of this many in turn.
    Keyed(usize),
}

impl From<Priority> for Shape {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Realtime => Self::Realtime,
            Priority::Bulk => Self::Bulk,
        }
    }
}

pub async fn throughput(
    brokers: &Brokers,
    args: &Args,
    traffic: Traffic,
) -> anyhow::Result<Throughput> {
    let name = match traffic {
        Traffic::Http {
            endpoints: 1,
            second: Second::None,
            ..
        } => "single",
        Traffic::Http {
            second: Second::Hanging,
            ..
        } => "isolation",
        Traffic::Http {
            second: Second::Answering,
            ..
        } => "isolation-control",
        Traffic::Http {
            formats: Formats::Mixed,
            ..
        } => "fanout-mixed",
        Traffic::Http { .. } => "fanout",
        Traffic::Amqp { .. } => "amqp",
        Traffic::Batch { .. } => "batch",
        Traffic::Ordered { .. } => "ordered",
    };
    let services = start_services(brokers, args, name).await?;
    let counter = Arc::new(Counter::default());
    let base = start_receiver(counter.clone()).await?;
    let (endpoints, events, second, formats) = match traffic {
        Traffic::Http {
            endpoints,
            events,
            second,
            formats,
        } => (endpoints, events, second, formats),
        Traffic::Amqp { events }
        | Traffic::Batch { events, .. }
        | Traffic::Ordered { events, .. } => (1, events, Second::None, Formats::Json),
    };
    let shape = match traffic {
        Traffic::Ordered { keys, .. } => Shape::Keyed(keys),
        _ => Shape::Realtime,
    };
    for index in 0..endpoints {
        let mut format = match formats {
            Formats::Json => json!({}),
            Formats::Mixed => mixed_format(index),
        };
        if let (Shape::Keyed(_), Some(fields)) = (shape, format.as_object_mut()) {
            fields.insert("ordered".into(), true.into());
        }
        services
            .create_endpoint_with("healthy", format!("{base}/ok"), format)
            .await?;
    }
    match second {
        Second::None => {}
        Second::Hanging => {
            services
                .create_endpoint("second", format!("{base}/hang"))
                .await?
        }
        Second::Answering => {
            services
                .create_endpoint("second", format!("{base}/other"))
                .await?
        }
    }
    let with_second = second != Second::None;
    let cpu_before = cpu_snapshot(&services);
    let started_us = now_us();
    match traffic {
        Traffic::Amqp { events } => publish_direct(brokers, &services.prefix, events).await?,
        Traffic::Batch {
            events,
            size,
            clients,
        } => send_batches_over_http(clients, events, size).await?,
        Traffic::Http { .. } | Traffic::Ordered { .. } => {
            let total = if with_second {
                events + events / (SECOND_TENANT_SHARE - 1)
            } else {
                events
            };
            send_over_http(
                args.clients,
                total,
                move |index| {
                    if with_second && index % SECOND_TENANT_SHARE == SECOND_TENANT_SHARE - 1 {
                        "second"
                    } else {
                        "healthy"
                    }
                },
                shape,
            )
            .await?;
        }
    }
    counter.wait_for(events * endpoints).await?;
    let cpu_per_event = cpu_per_item(cpu_before, cpu_snapshot(&services), events);
    let elapsed_s = (counter
        .last_us
        .load(Ordering::Relaxed)
        .saturating_sub(started_us)) as f64
        / 1e6;
    let (ingest_rss, deliverer_rss) = services.stop(brokers).await?;
    Ok(Throughput {
        events_per_s: events as f64 / elapsed_s,
        deliveries_per_s: (events * endpoints) as f64 / elapsed_s,
        ingest_rss,
        deliverer_rss,
        cpu_per_event,
    })
}

/// Sends `total` events from `clients` closed-loop clients; `tenant_of` names each
/// event's tenant by its index.
async fn send_over_http(
    clients: usize,
    total: usize,
    tenant_of: impl Fn(usize) -> &'static str + Copy + Send + 'static,
    shape: Shape,
) -> anyhow::Result<()> {
    let sent = Arc::new(AtomicUsize::new(0));
    let mut running = Vec::new();
    for _ in 0..clients {
        let sent = sent.clone();
        let padding = padding();
        running.push(tokio::spawn(async move {
            let mut ingest = IngestConnection::open().await?;
            loop {
                let index = sent.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                ingest
                    .send_event(tenant_of(index), event_bytes(&padding, shape, index))
                    .await?;
            }
        }));
    }
    for client in running {
        client.await??;
    }
    Ok(())
}

/// Sends `total` events in batches of `size` from `clients` closed-loop clients, all to
/// the measured tenant.
async fn send_batches_over_http(clients: usize, total: usize, size: usize) -> anyhow::Result<()> {
    let size = size.max(1);
    let sent = Arc::new(AtomicUsize::new(0));
    let mut running = Vec::new();
    for _ in 0..clients {
        let sent = sent.clone();
        let padding = padding();
        running.push(tokio::spawn(async move {
            let mut ingest = IngestConnection::open().await?;
            loop {
                let first = sent.fetch_add(size, Ordering::Relaxed);
                if first >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let count = size.min(total - first);
                let mut body = Vec::with_capacity(count * (padding.len() + 96) + 16);
                body.extend_from_slice(b"{\"events\":[");
                for index in 0..count {
                    if index > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&event_bytes(&padding, Shape::Realtime, 0));
                }
                body.extend_from_slice(b"]}");
                ingest.send_batch("healthy", body).await?;
            }
        }));
    }
    for client in running {
        client.await??;
    }
    Ok(())
}

pub struct HeldBacklog {
    /// CPU µs by process over the window.
    pub cpu_us: Vec<(&'static str, f64)>,
    /// Deliveries held back without an attempt during the window.
    pub deferrals: f64,
    /// Deliveries in the retry pool at the end.
    pub pool: u64,
}

/// What a backlog held behind an open circuit costs while nothing else happens: events
/// for an endpoint that refuses connections (its circuit opens after a few failures),
/// then the CPU and the deferrals over a window in which no event arrives.
pub async fn held_backlog(brokers: &Brokers, args: &Args) -> anyhow::Result<HeldBacklog> {
    let services = start_services(brokers, args, "held").await?;
    // A port nothing listens on: every attempt is refused at once.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    services
        .create_endpoint("held", format!("http://{closed}/gone"))
        .await?;
    send_over_http(args.clients, args.held_events, |_| "held", Shape::Realtime).await?;
    // The window starts once the deliverer has taken every event off the queue.
    let deadline = Instant::now() + DRAIN_LIMIT;
    while deliverer_metric(&services, "hookline_events_consumed_total", &[]).await?
        < args.held_events as f64
    {
        if Instant::now() > deadline {
            bail!("the deliverer did not consume the held events");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deferrals_before = held_again(&services).await?;
    let cpu_before = cpu_snapshot(&services);
    tokio::time::sleep(args.held_window).await;
    let cpu_after = cpu_snapshot(&services);
    let deferrals = held_again(&services).await? - deferrals_before;
    let client = redis::Client::open(brokers.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let keys = hookline_shared::store::Keyspace::new(&services.prefix);
    let mut pool: u64 = 0;
    for shard in 0..hookline_shared::store::retries::SHARDS {
        let tasks: u64 = redis::cmd("HLEN")
            .arg(keys.retry_tasks(shard))
            .query_async(&mut redis)
            .await?;
        pool += tasks;
    }
    services.stop(brokers).await?;
    let cpu_us = cpu_per_item(cpu_before, cpu_after, 1)
        .into_iter()
        .filter(|(name, _)| ["deliverer", "redis", "rabbitmq"].contains(name))
        .collect();
    Ok(HeldBacklog {
        cpu_us,
        deferrals,
        pool,
    })
}

/// Deliveries the deliverer has held back without an attempt so far.
async fn held_again(services: &Services) -> anyhow::Result<f64> {
    let attempts = "hookline_delivery_attempts_total";
    Ok(
        deliverer_metric(services, attempts, &[("outcome", "circuit_open")]).await?
            + deliverer_metric(services, attempts, &[("outcome", "endpoint_busy")]).await?,
    )
}

/// The sum of a deliverer metric's series whose labels include every one of `labels`.
async fn deliverer_metric(
    services: &Services,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let text = services
        .http
        .get(format!("http://{DELIVERER_ADMIN}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(hookline_tools::scrape::sum(&text, name, labels))
}

/// One closed-loop client of the event API: a keep-alive HTTP/1.1 connection driven by
/// hyper directly. The load generator shares the two cores with what it measures, and
/// reqwest's pooling and URL handling cost about as much again per request as the bare
/// connection, CPU the measured pipeline would otherwise have.
struct IngestConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
}

impl IngestConnection {
    async fn open() -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(API).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Self { sender })
    }

    /// Sends one event and checks it was accepted.
    async fn send_event(&mut self, tenant: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let (status, answer) = self
            .post(&format!("/v1/tenants/{tenant}/events"), body)
            .await?;
        if status != StatusCode::ACCEPTED {
            bail!(
                "ingest answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    }

    /// POSTs `body` to `path` and reads the answer to the end, so the connection can
    /// carry the next request.
    async fn post(&mut self, path: &str, body: Vec<u8>) -> anyhow::Result<(StatusCode, Bytes)> {
        use http_body_util::BodyExt;
        let request = axum::http::Request::post(path)
            .header(axum::http::header::HOST, API)
            .header(axum::http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        Ok((status, answer))
    }
}

impl IngestConnection {
    /// Sends one batch and checks every event of it was accepted.
    async fn send_batch(&mut self, tenant: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let (status, answer) = self
            .post(&format!("/v1/tenants/{tenant}/events/batch"), body)
            .await?;
        // A refused event is an `"error"` among the results; searching the bytes costs
        // the load generator less than parsing every answer.
        let refused = answer.windows(8).any(|window| window == b"\"error\":");
        if status != StatusCode::OK || refused {
            bail!(
                "ingest answered {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(())
    }
}

/// Publishes straight to the events exchange as an ATS would: pipelined confirms.
async fn publish_direct(brokers: &Brokers, prefix: &str, events: usize) -> anyhow::Result<()> {
    let connection =
        Connection::connect(&brokers.amqp_url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let exchange = format!("{prefix}.events");
    let mut in_flight = FuturesUnordered::new();
    for index in 0..events {
        if in_flight.len() >= 1000 {
            in_flight.next().await.transpose()?;
        }
        let mut body = event_body(Some("healthy"));
        body["id"] = format!("evt_{prefix}_{index}").into();
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                "profile.parsing.success".into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&body)?,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await?;
        in_flight.push(confirm);
    }
    while let Some(confirm) = in_flight.next().await {
        confirm?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Open loop at a fixed rate: latency from send to receipt, p50/p99/p99.9 in ms.
pub async fn latency(brokers: &Brokers, args: &Args) -> anyhow::Result<(f64, f64, f64)> {
    let services = start_services(brokers, args, "latency").await?;
    let counter = Arc::new(Counter::keeping(Keep::SentAndArrivals));
    let base = start_receiver(counter.clone()).await?;
    services
        .create_endpoint("healthy", format!("{base}/ok"))
        .await?;
    let total = (args.latency_rate as f64 * args.latency_duration.as_secs_f64()) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.latency_rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let failures = Arc::new(AtomicUsize::new(0));
    for _ in 0..total {
        ticker.tick().await;
        let http = services.http.clone();
        let failures = failures.clone();
        tokio::spawn(async move {
            let sent = http
                .post(format!("http://{API}/v1/tenants/healthy/events"))
                .bearer_auth(TOKEN)
                .json(&event_body(None))
                .send()
                .await;
            if !sent.is_ok_and(|r| r.status() == StatusCode::ACCEPTED) {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    counter.wait_for(total).await?;
    if failures.load(Ordering::Relaxed) > 0 {
        bail!(
            "{} events were not accepted",
            failures.load(Ordering::Relaxed)
        );
    }
    services.stop(brokers).await?;
    let mut latencies: Vec<f64> = counter
        .take_arrivals()
        .into_iter()
        .filter_map(|arrival| Some(arrival.received_us.saturating_sub(arrival.sent_us?) as f64))
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |q| quantile(&latencies, q).context("no event carried its send time");
    Ok((at(0.5)?, at(0.99)?, at(0.999)?))
}

pub struct NoisyNeighbour {
    pub drain: Drain,
    /// The quiet tenant's events sent in all; some may have been sent once the backlog
    /// had drained, and [`Drain::quiet`] leaves those out.
    pub quiet_sent: usize,
}

/// A backlog of one tenant ("heavy") accumulated while no deliverer runs, then drained
/// while another tenant ("quiet") sends at a fixed rate from the moment the deliverer is
/// ready until the backlog's last event arrives. Each tenant has its own endpoint and
/// its own receiver, so the two share nothing past the deliverer.
/// With `Priority::Bulk`, the backlog's events are marked bulk (the `bulk_lane` scenario).
pub async fn noisy_neighbour(
    brokers: &Brokers,
    args: &Args,
    backlog_priority: Priority,
) -> anyhow::Result<NoisyNeighbour> {
    if args.noisy_backlog == 0 || args.noisy_quiet_rate == 0 {
        bail!("--noisy-backlog and --noisy-quiet-rate must be above 0");
    }
    let mut services = start_ingest(brokers, args, "noisy").await?;
    let heavy = Arc::new(Counter::keeping(Keep::Arrivals));
    let quiet = Arc::new(Counter::keeping(Keep::SentAndArrivals));
    let heavy_base = start_receiver(heavy.clone()).await?;
    let quiet_base = start_receiver(quiet.clone()).await?;
    services
        .create_endpoint("heavy", format!("{heavy_base}/ok"))
        .await?;
    services
        .create_endpoint("quiet", format!("{quiet_base}/ok"))
        .await?;
    // Ingest answers each event after the broker's confirm: once every client is done,
    // the whole backlog is in the deliveries queue.
    send_over_http(
        args.clients,
        args.noisy_backlog,
        |_| "heavy",
        Shape::from(backlog_priority),
    )
    .await?;
    services.start_deliverer(brokers, args).await?;
    let ready_us = now_us();

    let mut ticker =
        tokio::time::interval(Duration::from_secs_f64(1.0 / args.noisy_quiet_rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let drained = heavy.wait_for(args.noisy_backlog);
    tokio::pin!(drained);
    let mut sending = Vec::new();
    loop {
        tokio::select! {
            biased;
            drained = &mut drained => {
                drained?;
                break;
            }
            _ = ticker.tick() => {
                let http = services.http.clone();
                sending.push(tokio::spawn(async move {
                    http.post(format!("http://{API}/v1/tenants/quiet/events"))
                        .bearer_auth(TOKEN)
                        .json(&event_body(None))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == StatusCode::ACCEPTED)
                }));
            }
        }
    }
    let quiet_sent = sending.len();
    let mut refused = 0;
    for send in sending {
        if !send.await? {
            refused += 1;
        }
    }
    if refused > 0 {
        bail!("{refused} of the quiet tenant's {quiet_sent} events were not accepted");
    }
    quiet.wait_for(quiet_sent).await?;
    services.stop(brokers).await?;

    let backlog: Vec<u64> = heavy
        .take_arrivals()
        .iter()
        .map(|arrival| arrival.received_us)
        .collect();
    let quiet: Vec<(u64, u64)> = quiet
        .take_arrivals()
        .iter()
        .map(|arrival| {
            let sent = arrival
                .sent_us
                .context("a quiet event arrived without its send time")?;
            Ok((sent, arrival.received_us))
        })
        .collect::<anyhow::Result<_>>()?;
    let drain = drain::summarise(ready_us, &backlog, &quiet).context("no backlog event arrived")?;
    Ok(NoisyNeighbour { drain, quiet_sent })
}
