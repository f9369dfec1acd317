//! Faults, with the real binaries as processes: a deliverer killed with SIGKILL, RabbitMQ
//! and Redis restarted under the services' feet. Nothing accepted may be lost.
//!
//! These tests restart brokers, so they run serially against their own broker instance
//! (`make test` starts the `chaos` instance and runs this binary with one thread).

use hookline_shared::domain::trace::TraceParent;
use hookline_tests::{
    ExportedSpan, OtlpCollector, Receiver, TOKEN, answer, eventually, eventually_within,
};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

mod cluster;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the fault tests with `make test`"))
}

/// A port free now for a process to listen on. The kernel may hand a port it gave out a
/// moment ago again before the process it was meant for has bound it, so this never
/// returns one twice.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Restarts (or stops / starts) a service of the broker instance these tests own.
async fn brokers(action: &str, service: &str) {
    let instance = env("HOOKLINE_TEST_BROKERS_INSTANCE");
    let status = Command::new(root().join("scripts/brokers.sh"))
        .args([action, &instance, service])
        .stdout(Stdio::null())
        .status()
        .await
        .expect("brokers.sh runs");
    assert!(status.success(), "brokers.sh {action} {instance} {service}");
}

struct Process {
    child: Child,
    admin: u16,
    /// Where its stdout and stderr go: read when it does not become ready, and by tests
    /// of what it prints.
    log: PathBuf,
}

/// Ingest and deliverers as separate processes of the real binaries.
struct Installation {
    prefix: String,
    api: u16,
    ingest: Process,
    deliverers: Vec<Process>,
    http: reqwest::Client,
    environment: Vec<(&'static str, String)>,
}

impl Installation {
    async fn start(deliverers: usize) -> Self {
        Self::start_with(deliverers, Vec::new()).await
    }

    /// Both binaries get `environment` on top of the defaults (other broker URLs, …).
    async fn start_with(deliverers: usize, environment: Vec<(&'static str, String)>) -> Self {
        let prefix = format!("f{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let api = free_port();
        let mut ingest_environment = environment.clone();
        ingest_environment.push(("HOOKLINE__HTTP__LISTEN", format!("127.0.0.1:{api}")));
        let mut installation = Self {
            ingest: spawn(&prefix, "hookline-ingest", &ingest_environment),
            deliverers: Vec::new(),
            prefix,
            api,
            http: reqwest::Client::new(),
            environment,
        };
        for _ in 0..deliverers {
            installation.add_deliverer();
        }
        for process in installation.processes() {
            installation.wait_ready(process).await;
        }
        installation
    }

    fn add_deliverer(&mut self) {
        self.add_deliverer_with(&[]);
    }

    /// A deliverer with `overrides` on top of the installation's environment.
    fn add_deliverer_with(&mut self, overrides: &[(&'static str, String)]) {
        let mut environment = self.environment.clone();
        environment.extend_from_slice(overrides);
        self.deliverers
            .push(spawn(&self.prefix, "hookline-deliverer", &environment));
    }

    fn processes(&self) -> impl Iterator<Item = &Process> {
        std::iter::once(&self.ingest).chain(&self.deliverers)
    }

    fn admins(&self) -> Vec<u16> {
        self.processes().map(|process| process.admin).collect()
    }

    async fn status(&self, admin: u16, path: &str) -> Option<u16> {
        self.http
            .get(format!("http://127.0.0.1:{admin}{path}"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// Waits for `/readyz` to answer 200; a process that does not get there fails the
    /// test with what it said: its readiness report and the end of its output.
    async fn wait_ready(&self, process: &Process) {
        let deadline = tokio::time::Instant::now() + hookline_tests::PATIENCE;
        loop {
            let report = match self
                .http
                .get(format!("http://127.0.0.1:{}/readyz", process.admin))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(response) if response.status() == 200 => return,
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(error) => format!("no answer: {error}"),
            };
            if tokio::time::Instant::now() >= deadline {
                let output = std::fs::read_to_string(&process.log).unwrap_or_default();
                let tail: Vec<&str> = output.lines().rev().take(40).collect();
                panic!(
                    "{} (admin port {}) not ready after {:?}; /readyz: {report}\n\
                     last lines of {}:\n{}",
                    process.log.file_name().unwrap_or_default().display(),
                    process.admin,
                    hookline_tests::PATIENCE,
                    process.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> hookline_tests::Answer {
        let response = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.api))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(15))
            .json(&body)
            .send()
            .await
            .expect("ingest answers");
        answer(response).await
    }

    /// Returns the endpoint's id.
    async fn create_endpoint(&self, tenant: &str, url: String) -> String {
        let created = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/endpoints"),
                json!({"url": url, "event_types": ["#"]}),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        created.body["id"].as_str().expect("id").to_owned()
    }

    /// Posts an event, retrying (as a client would) while ingest answers 503; returns
    /// once it was accepted.
    async fn post_until_accepted(&self, tenant: &str, id: &str) {
        let event = json!({"id": id, "type": "fault.test", "data": {}});
        eventually("the event is accepted", || async {
            let accepted = self
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/tenants/{tenant}/events"),
                    event.clone(),
                )
                .await;
            assert!(
                accepted.status == 202 || accepted.status == 503,
                "accepted or unavailable, never anything else: {} {}",
                accepted.status,
                accepted.body
            );
            accepted.status == 202
        })
        .await;
    }

    async fn stop(mut self) {
        for process in self
            .deliverers
            .iter_mut()
            .chain(std::iter::once(&mut self.ingest))
        {
            let _ = process.child.kill().await;
        }
    }
}

/// What the processes that wrote `logs` printed, one after another.
fn output_of(logs: &[PathBuf]) -> String {
    logs.iter()
        .map(|log| std::fs::read_to_string(log).unwrap_or_default())
        .collect()
}

fn spawn(prefix: &str, binary: &str, extra: &[(&str, String)]) -> Process {
    let admin = free_port();
    let path = root().join("target/debug").join(binary);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`make test` does)",
        path.display()
    );
    let mut command = Command::new(path);
    command
        .env("HOOKLINE__PREFIX", prefix)
        .env("HOOKLINE__AMQP__URL", env("HOOKLINE_TEST_AMQP_URL"))
        .env("HOOKLINE__REDIS__URL", env("HOOKLINE_TEST_REDIS_URL"))
        .env("HOOKLINE__API__TOKEN", TOKEN)
        .env("HOOKLINE__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .env("HOOKLINE__DELIVERY__ALLOW_PRIVATE_NETWORKS", "true")
        .env(
            "HOOKLINE__DELIVERY__RETRY_SCHEDULE",
            "200ms,200ms,500ms,1s,1s,2s,2s",
        )
        .env("HOOKLINE__DELIVERY__TIMEOUT", "3s")
        .env("HOOKLINE__DELIVERY__ENDPOINT_CACHE_TTL", "100ms")
        .env("HOOKLINE__RETRY__POLL_INTERVAL", "50ms")
        .env("HOOKLINE__RETRY__LEASE", "5s")
        .env("HOOKLINE__SHUTDOWN__GRACE", "5s")
        .env("HOOKLINE__LOG__FILTER", "warn")
        .kill_on_drop(true);
    for (key, value) in extra {
        command.env(key, value);
    }
    let log_dir = root().join("target/fault-logs").join(prefix);
    std::fs::create_dir_all(&log_dir).expect("log directory");
    let log = log_dir.join(format!("{binary}-{admin}.log"));
    let output = std::fs::File::create(&log).expect("log file");
    command.stderr(output.try_clone().expect("log file"));
    command.stdout(output);
    Process {
        child: command.spawn().expect("binary starts"),
        admin,
        log,
    }
}

/// An unlabelled metric of one deliverer (0 while it cannot be read).
async fn metric(http: &reqwest::Client, admin: u16, name: &str) -> f64 {
    let Ok(response) = http
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    hookline_tools::scrape::sum(&text, name, &[])
}

/// Waits until the process at `admin` reports `name` above zero (a count of one or more).
async fn until_positive(http: &reqwest::Client, admin: u16, name: &str, what: &str) {
    eventually(what, || async { metric(http, admin, name).await > 0.0 }).await;
}

/// Kills a process with no chance to clean up, as a crash or an OOM kill would.
async fn sigkill(victim: &Process) {
    signal(victim, "-KILL").await;
}

/// Sends `signal` (`-KILL`, `-STOP`, `-CONT`) to a process.
async fn signal(victim: &Process, signal: &str) {
    let pid = victim.child.id().expect("pid");
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success());
}

fn delivered_ids(receiver: &Receiver) -> HashSet<String> {
    receiver
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_deliverer_killed_mid_flight_loses_nothing() {
    let mut hookline = Installation::start(2).await;
    let receiver = Receiver::start().await;
    // Slow answers keep deliveries in flight when the kill comes.
    receiver.set_delay(Some(Duration::from_millis(300)));
    hookline.create_endpoint("acme", receiver.url()).await;
    let ids: Vec<String> = (0..60).map(|n| format!("kill-{n}")).collect();
    for id in &ids {
        hookline.post_until_accepted("acme", id).await;
    }
    let victim_admin = hookline.deliverers[0].admin;
    until_positive(
        &hookline.http,
        victim_admin,
        "hookline_deliveries_in_flight",
        "the victim has deliveries in flight",
    )
    .await;
    let victim = hookline.deliverers.remove(0);
    sigkill(&victim).await;
    receiver.wait_for_events(&ids).await;
    drop(victim);
    hookline.stop().await;
}

#[tokio::test]
async fn a_deliverer_killed_after_handing_off_a_slow_delivery_loses_nothing() {
    let mut hookline = Installation::start(1).await;
    let receiver = Receiver::start().await;
    receiver.hold_answers();
    hookline.create_endpoint("acme", receiver.url()).await;
    hookline.post_until_accepted("acme", "handed-off").await;
    receiver.wait_for(1).await;
    // The message is acked once the delivery is handed off: from then on only the
    // claimed task in Redis stands for it.
    let victim_admin = hookline.deliverers[0].admin;
    until_positive(
        &hookline.http,
        victim_admin,
        "hookline_deliveries_handed_off_total",
        "the slow delivery is handed off",
    )
    .await;
    let victim = hookline.deliverers.remove(0);
    sigkill(&victim).await;
    receiver.release_answers();
    hookline.add_deliverer();
    // The task's lease (5 s) runs out and the new replica attempts it again.
    let received = receiver.wait_for(2).await;
    assert_eq!(received[1].header("webhook-id"), Some("handed-off"));
    drop(victim);
    hookline.stop().await;
}

#[tokio::test]
async fn a_rabbitmq_restart_loses_nothing_and_ingest_answers_503_meanwhile() {
    let hookline = Installation::start(1).await;
    let receiver = Receiver::start().await;
    hookline.create_endpoint("acme", receiver.url()).await;
    let mut ids = vec!["before-restart".to_owned()];
    hookline.post_until_accepted("acme", &ids[0]).await;

    brokers("stop", "rabbitmq").await;
    let refused = hookline
        .call(
            reqwest::Method::POST,
            "/v1/tenants/acme/events",
            json!({"id": "while-down", "type": "fault.test", "data": {}}),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body["error"]["code"].is_string(), "a JSON error");
    eventually("readiness fails while RabbitMQ is down", || async {
        hookline.status(hookline.ingest.admin, "/readyz").await == Some(503)
    })
    .await;
    assert_eq!(
        hookline.status(hookline.ingest.admin, "/healthz").await,
        Some(200),
        "liveness does not depend on the broker"
    );

    brokers("start", "rabbitmq").await;
    ids.push("after-restart".to_owned());
    // The refused event is not accepted until it is sent again; a client does that.
    ids.push("while-down".to_owned());
    hookline.post_until_accepted("acme", &ids[1]).await;
    hookline.post_until_accepted("acme", &ids[2]).await;
    receiver.wait_for_events(&ids).await;
    for process in hookline.processes() {
        hookline.wait_ready(process).await;
    }
    hookline.stop().await;
}

/// `rabbitmqctl` against the broker instance these tests own.
fn rabbitmqctl(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(root().join("scripts/brokers.sh"));
    command
        .arg("ctl")
        .arg(env("HOOKLINE_TEST_BROKERS_INSTANCE"))
        .args(args)
        .stdout(Stdio::null());
    command
}

/// Raises a resource alarm with `raise` (rabbitmqctl arguments); `clear` ends it when
/// the guard drops.
async fn raise_alarm(raise: &[&str], clear: &'static [&'static str]) -> Undo {
    let status = Command::from(rabbitmqctl(raise))
        .status()
        .await
        .expect("brokers.sh runs");
    assert!(status.success(), "rabbitmqctl {raise:?}");
    Undo::new(|| {
        let _ = rabbitmqctl(clear).status();
    })
}

#[tokio::test]
async fn a_resource_alarm_is_answered_503_broker_blocked_and_nothing_is_lost() {
    // A memory watermark far below what the node uses raises the alarm at once.
    alarm_is_answered_503_and_loses_nothing(
        &["set_vm_memory_high_watermark", "0.00001"],
        &["set_vm_memory_high_watermark", "0.4"],
    )
    .await;
}

#[tokio::test]
async fn a_disk_alarm_is_answered_503_broker_blocked_and_nothing_is_lost() {
    // A free-disk limit above what any disk has raises the disk alarm.
    alarm_is_answered_503_and_loses_nothing(
        &["set_disk_free_limit", "1000000GB"],
        &["set_disk_free_limit", "50MB"],
    )
    .await;
}

/// Raises a resource alarm with `raise` (rabbitmqctl arguments): ingest answers 503
/// `broker_blocked` and its readiness says why; once `clear` ends it, the refused event
/// is accepted when sent again and every accepted event is delivered.
async fn alarm_is_answered_503_and_loses_nothing(raise: &[&str], clear: &'static [&'static str]) {
    let hookline = Installation::start(1).await;
    let receiver = Receiver::start().await;
    hookline.create_endpoint("acme", receiver.url()).await;
    let mut ids = vec!["before-alarm".to_owned()];
    hookline.post_until_accepted("acme", &ids[0]).await;

    let alarm = raise_alarm(raise, clear).await;
    let refused = std::cell::RefCell::new(Value::Null);
    eventually_within(
        "ingest refuses events with broker_blocked",
        Duration::from_secs(90),
        || async {
            let answer = hookline
                .call(
                    reqwest::Method::POST,
                    "/v1/tenants/acme/events",
                    json!({"id": "during-alarm", "type": "fault.test", "data": {}}),
                )
                .await;
            let blocked = answer.status == 503 && answer.body["error"]["code"] == "broker_blocked";
            *refused.borrow_mut() = answer.body;
            blocked
        },
    )
    .await;
    assert!(
        refused.borrow()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("resource alarm")),
        "{}",
        refused.borrow()
    );
    let readiness: Value = hookline
        .http
        .get(format!("http://127.0.0.1:{}/readyz", hookline.ingest.admin))
        .send()
        .await
        .expect("admin reachable")
        .json()
        .await
        .expect("readiness JSON");
    assert_eq!(readiness["amqp_unblocked"], false, "{readiness}");

    drop(alarm);
    // The refused event is accepted once it is sent again, as a client would.
    ids.push("during-alarm".to_owned());
    ids.push("after-alarm".to_owned());
    hookline.post_until_accepted("acme", &ids[1]).await;
    hookline.post_until_accepted("acme", &ids[2]).await;
    receiver.wait_for_events(&ids).await;
    hookline.wait_ready(&hookline.ingest).await;
    hookline.stop().await;
}

/// Undoes a change to the brokers these tests own when dropped — also when the test
/// fails, so that the next test finds them as `make test` started them.
struct Undo(Option<Box<dyn FnOnce()>>);

impl Undo {
    fn new(undo: impl FnOnce() + 'static) -> Self {
        Self(Some(Box::new(undo)))
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}

/// `CONFIG SET` on the Redis these tests own, undone (set to `restore`) when the guard
/// drops.
fn redis_config_set(parameter: &'static str, value: &str, restore: &'static str) -> Undo {
    fn config_set(parameter: &str, value: &str) -> redis::RedisResult<()> {
        let client = redis::Client::open(env("HOOKLINE_TEST_REDIS_URL"))?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(parameter)
            .arg(value)
            .query(&mut client.get_connection()?)
    }
    config_set(parameter, value).expect("CONFIG SET");
    Undo::new(move || {
        let _ = config_set(parameter, restore);
    })
}

#[tokio::test]
async fn redis_refusing_writes_is_answered_503_and_held_until_it_accepts_them() {
    let hookline = Installation::start(1).await;
    let receiver = Receiver::answering(&[500]).await;
    hookline.create_endpoint("acme", receiver.url()).await;

    // Under `noeviction` (Redis's default policy), a byte of maxmemory refuses every
    // write with OOM while reads go on.
    let refusing = redis_config_set("maxmemory", "1", "0");
    let refused = hookline
        .call(
            reqwest::Method::POST,
            "/v1/tenants/acme/endpoints",
            json!({"url": receiver.url(), "event_types": ["#"]}),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "storage_refusing_writes");
    // An event without an id needs no write to be accepted; its failed first attempt
    // needs one to schedule the retry, which is held until Redis takes it.
    let accepted = hookline
        .call(
            reqwest::Method::POST,
            "/v1/tenants/acme/events",
            json!({"type": "fault.test", "data": {}}),
        )
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    until_positive(
        &hookline.http,
        hookline.deliverers[0].admin,
        "hookline_store_write_refusals_total",
        "the deliverer counts the refused writes it holds",
    )
    .await;
    assert_eq!(receiver.count(), 1, "only the failed first attempt so far");

    drop(refusing);
    receiver.wait_for(2).await;
    hookline.stop().await;
}

#[tokio::test]
async fn a_redis_restart_holds_deliveries_until_it_is_back() {
    let hookline = Installation::start(1).await;
    let receiver = Receiver::answering(&[500]).await;
    hookline.create_endpoint("acme", receiver.url()).await;
    let first = "retry-across-restart".to_owned();
    hookline.post_until_accepted("acme", &first).await;
    eventually("the first attempt failed and a retry is stored", || async {
        receiver.count() >= 1
    })
    .await;

    brokers("stop", "redis").await;
    // Ingest publishes without Redis for ids it generates; management calls need it.
    let listed = hookline
        .call(
            reqwest::Method::GET,
            "/v1/tenants/acme/endpoints",
            Value::Null,
        )
        .await;
    assert_eq!(listed.status, 503, "{}", listed.body);
    let accepted = hookline
        .call(
            reqwest::Method::POST,
            "/v1/tenants/acme/events",
            json!({"type": "fault.test", "data": {"while": "redis down"}}),
        )
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let generated = accepted.body["id"].as_str().expect("id").to_owned();

    brokers("start", "redis").await;
    receiver.wait_for_events(&[first, generated]).await;
    hookline.stop().await;
}

/// How long the chaos run may take to reach a fault or to drain: sized for the run of
/// `make chaos`, not for one test.
const CHAOS_PATIENCE: Duration = Duration::from_secs(900);

/// The chaos scenario: mixed HTTP and direct AMQP load over several tenants and
/// endpoints (one failing for a while), while a deliverer is SIGKILLed twice (and
/// replaced), RabbitMQ restarts once and Redis restarts once. Then it reconciles every
/// (event, endpoint) pair against what the receivers got and the dead-letter queue.
///
/// `CHAOS_EVENTS` sets the size (`make test` runs a small one, `make chaos` 20,000);
/// the report is printed (run with `--nocapture` to see it).
#[tokio::test]
async fn chaos_loses_nothing() {
    let events: usize = std::env::var("CHAOS_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1500);
    let started = std::time::Instant::now();
    // One endpoint fails until the load is over. Its deliveries held behind the open
    // circuit come back when a scout's probe succeeds; the scouts are used up by the
    // probes that fail during the load, and then the held ones wait for `max_hold`
    // (1 h by default). This test is about loss, not about how soon a recovered
    // endpoint's backlog resumes, so the hold is short enough to fit its patience.
    let mut hookline =
        Installation::start_with(3, vec![("HOOKLINE__DELIVERY__MAX_HOLD", "20s".to_owned())]).await;
    let tenants = ["acme", "globex", "initech"];
    let mut receivers = Vec::new();
    for tenant in tenants {
        for _ in 0..2 {
            let receiver = Receiver::start().await;
            let endpoint = hookline.create_endpoint(tenant, receiver.url()).await;
            receivers.push((tenant, receiver, endpoint));
        }
    }
    // One endpoint fails until the load is over, then recovers.
    receivers[1].1.set_status(503);
    let ids: Vec<(usize, String)> = (0..events)
        .map(|n| (n % tenants.len(), format!("chaos-{n}")))
        .collect();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let ids = ids.clone();
            let sent = sent.clone();
            let http = hookline.http.clone();
            let api = hookline.api;
            let prefix = hookline.prefix.clone();
            tokio::spawn(async move {
                loop {
                    let index = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((tenant, id)) = ids.get(index) else {
                        return;
                    };
                    let tenant = ["acme", "globex", "initech"][*tenant];
                    // One in four goes straight to the exchange, as an ATS would.
                    loop {
                        let accepted = if index % 4 == 3 {
                            publish_direct(&prefix, tenant, id).await
                        } else {
                            post(&http, api, tenant, id).await
                        };
                        if accepted {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    let progress = || sent.load(std::sync::atomic::Ordering::Relaxed);
    let at = |fraction: f64| (events as f64 * fraction) as usize;
    let mut faults = Vec::new();
    for (threshold, fault) in [
        (0.2, "kill"),
        (0.4, "rabbitmq"),
        (0.6, "kill"),
        (0.8, "redis"),
    ] {
        eventually_within(
            "the load reaches the next fault",
            CHAOS_PATIENCE,
            || async { progress() >= at(threshold) },
        )
        .await;
        match fault {
            "kill" => {
                let victim = hookline.deliverers.remove(0);
                sigkill(&victim).await;
                drop(victim);
                hookline.add_deliverer();
            }
            service => brokers("restart", service).await,
        }
        faults.push(format!(
            "{fault} at {:.0} % ({:.1} s)",
            threshold * 100.0,
            started.elapsed().as_secs_f64()
        ));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    let sent_at = started.elapsed();
    receivers[1].1.set_status(204);

    // Every (event, endpoint) pair: delivered at least once, or dead-lettered.
    let pairs: Vec<(&Receiver, &str, &str)> = receivers
        .iter()
        .flat_map(|(tenant, receiver, endpoint)| {
            ids.iter()
                .filter(move |(t, _)| tenants[*t] == *tenant)
                .map(move |(_, id)| (receiver, endpoint.as_str(), id.as_str()))
        })
        .collect();
    let dead_letters = std::cell::RefCell::new(HashSet::new());
    let unsettled = |dead: &HashSet<(String, String)>| {
        let delivered: Vec<HashSet<String>> =
            receivers.iter().map(|(_, r, _)| delivered_ids(r)).collect();
        pairs
            .iter()
            .filter(|(receiver, endpoint, id)| {
                let index = receivers
                    .iter()
                    .position(|(_, r, _)| std::ptr::eq(r, *receiver))
                    .unwrap_or(0);
                !delivered[index].contains(*id)
                    && !dead.contains(&((*endpoint).to_owned(), (*id).to_owned()))
            })
            .count()
    };
    let drain_started = std::time::Instant::now();
    eventually_within(
        "every pair is delivered or dead-lettered",
        CHAOS_PATIENCE,
        || async {
            for record in take_dead_letters(&hookline.prefix).await {
                dead_letters.borrow_mut().insert(record);
            }
            unsettled(&dead_letters.borrow()) == 0
        },
    )
    .await;
    let drain = drain_started.elapsed();
    let lost = unsettled(&dead_letters.borrow());
    let receipts: usize = receivers.iter().map(|(_, r, _)| r.count()).sum();
    let unique: usize = receivers
        .iter()
        .map(|(_, r, _)| delivered_ids(r).len())
        .sum();
    println!(
        "chaos: {events} events × 2 endpoints per tenant, 3 deliverers, faults: {}\n\
         chaos: load sent in {:.1} s, drained {:.1} s after\n\
         chaos: pairs {}, delivered {unique}, dead-lettered {}, lost = {lost}\n\
         chaos: duplicate rate {:.2} % ({receipts} receipts for {unique} distinct deliveries)",
        faults.join(", "),
        sent_at.as_secs_f64(),
        drain.as_secs_f64(),
        pairs.len(),
        dead_letters.borrow().len(),
        100.0 * (receipts.saturating_sub(unique)) as f64 / unique.max(1) as f64,
    );
    assert_eq!(lost, 0);
    hookline.stop().await;
}

async fn post(http: &reqwest::Client, api: u16, tenant: &str, id: &str) -> bool {
    post_status(http, api, tenant, id).await == Some(202)
}

/// The answer's status to a chaos event, or `None` without an answer.
async fn post_status(http: &reqwest::Client, api: u16, tenant: &str, id: &str) -> Option<u16> {
    http.post(format!("http://127.0.0.1:{api}/v1/tenants/{tenant}/events"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(15))
        .json(&json!({"id": id, "type": "chaos.test", "data": {}}))
        .send()
        .await
        .ok()
        .map(|answer| answer.status().as_u16())
}

/// Publishes with a confirm on a fresh connection (the broker may restart between
/// calls); true once the broker confirmed it.
async fn publish_direct(prefix: &str, tenant: &str, id: &str) -> bool {
    publish_direct_via(&env("HOOKLINE_TEST_AMQP_URL"), prefix, tenant, id).await
}

/// A connection to the first node of `urls` (comma-separated) that accepts one.
async fn connect_any(urls: &str) -> Option<lapin::Connection> {
    for url in urls.split(',') {
        let connecting =
            lapin::Connection::connect(url.trim(), lapin::ConnectionProperties::default());
        if let Ok(Ok(connection)) = tokio::time::timeout(Duration::from_secs(3), connecting).await {
            return Some(connection);
        }
    }
    None
}

async fn publish_direct_via(urls: &str, prefix: &str, tenant: &str, id: &str) -> bool {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let attempt = async {
        let Some(connection) = connect_any(urls).await else {
            return Ok(false);
        };
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let body = serde_json::to_vec(
            &json!({"tenant": tenant, "id": id, "type": "chaos.test", "data": {}}),
        )
        .unwrap_or_default();
        let confirm = channel
            .basic_publish(
                format!("{prefix}.events").as_str().into(),
                "chaos.test".into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &body,
                lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(id.into()),
            )
            .await?
            .await?;
        let _ = connection.close(200, "done".into()).await;
        Ok::<_, lapin::Error>(matches!(confirm, lapin::Confirmation::Ack(None)))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Ok(true))
    )
}

/// Takes what is on the dead-letter queue now: (endpoint id, event id) of delivery
/// records.
async fn take_dead_letters(prefix: &str) -> Vec<(String, String)> {
    take_dead_letters_via(&env("HOOKLINE_TEST_AMQP_URL"), prefix)
        .await
        .into_iter()
        .map(|(endpoint, id, _)| (endpoint, id))
        .collect()
}

/// [`take_dead_letters`] from the first reachable node of `urls`, with each record's
/// reason.
async fn take_dead_letters_via(urls: &str, prefix: &str) -> Vec<(String, String, String)> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let mut found = Vec::new();
    let Some(connection) = connect_any(urls).await else {
        return found;
    };
    let Ok(channel) = connection.create_channel().await else {
        return found;
    };
    let queue = format!("{prefix}.dead-letter");
    while let Ok(Some(message)) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
    {
        if let Ok(record) = serde_json::from_slice::<Value>(&message.delivery.data)
            && let (Some(endpoint), Some(id)) =
                (record["endpoint_id"].as_str(), record["event_id"].as_str())
        {
            let reason = record["reason"].as_str().unwrap_or_default().to_owned();
            found.push((endpoint.to_owned(), id.to_owned(), reason));
        }
        let _ = message.delivery.acker.ack(BasicAckOptions::default()).await;
    }
    let _ = connection.close(200, "done".into()).await;
    found
}

/// `amqps://` and `rediss://`: both binaries connect over TLS to listeners that speak
/// nothing else, trusting the test CA through `SSL_CERT_FILE` (how a private CA is
/// configured in production too), and the pipeline works end to end. Without the CA they
/// refuse the servers' certificate and never turn ready.
#[tokio::test]
async fn tls_broker_urls_carry_the_whole_pipeline() {
    let amqps = env("HOOKLINE_TEST_AMQPS_URL");
    let rediss = env("HOOKLINE_TEST_REDISS_URL");
    assert!(amqps.starts_with("amqps://") && rediss.starts_with("rediss://"));
    let tls = vec![
        ("HOOKLINE__AMQP__URL", amqps.clone()),
        ("HOOKLINE__REDIS__URL", rediss.clone()),
        ("SSL_CERT_FILE", env("HOOKLINE_TEST_TLS_CA")),
    ];
    let hookline = Installation::start_with(1, tls).await;
    let receiver = Receiver::start().await;
    hookline.create_endpoint("acme", receiver.url()).await;
    hookline.post_until_accepted("acme", "over-tls-1").await;
    receiver.wait_for_events(&["over-tls-1".to_owned()]).await;
    hookline.stop().await;

    // The same URLs with only the system's roots: the certificate is refused.
    let empty_bundle = tempfile::NamedTempFile::new().expect("temp file");
    let log = tempfile::NamedTempFile::new().expect("temp file");
    let admin = free_port();
    let path = root().join("target/debug/hookline-deliverer");
    let mut untrusting = Command::new(path)
        .env("HOOKLINE__PREFIX", "untrusting")
        .env("HOOKLINE__AMQP__URL", &amqps)
        .env("HOOKLINE__REDIS__URL", &rediss)
        .env("HOOKLINE__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .env("HOOKLINE__LOG__FILTER", "warn")
        .env("SSL_CERT_FILE", empty_bundle.path())
        .stdout(log.reopen().expect("log file"))
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("deliverer starts");
    // Both clients, RabbitMQ's and Redis's, refuse it.
    eventually(
        "the deliverer reports the untrusted certificate",
        || async {
            std::fs::read_to_string(log.path()).is_ok_and(|text| {
                let refused = |client: &str| {
                    text.lines()
                        .any(|line| line.contains(client) && line.contains("UnknownIssuer"))
                };
                refused("RabbitMQ connection failed") && refused("connecting to Redis failed")
            })
        },
    )
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_ne!(ready, Some(200), "not ready without a trusted connection");
    let _ = untrusting.kill().await;
}

/// Issue 18's proof: 1,000 events over 20 ordering keys, interleaved, to an ordered
/// endpoint whose receiver fails a fifth of the attempts (a fixed pseudo-random draw per
/// event and attempt) and never answers a few, with three deliverers of which one is
/// SIGKILLed mid-run. For every key, the first 2xx answers come in the order the events
/// were accepted, and every event gets one. An unordered endpoint of the same tenant
/// gets every event without waiting for the ordered one.
#[tokio::test]
async fn ordered_delivery_keeps_each_keys_order_through_failures_hangs_and_a_kill() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    const EVENTS: usize = 1_000;
    const KEYS: usize = 20;
    let mut hookline = Installation::start_with(
        3,
        vec![
            ("HOOKLINE__DELIVERY__TIMEOUT", "1s".into()),
            ("HOOKLINE__DELIVERY__MAX_HOLD", "2s".into()),
            ("HOOKLINE__DELIVERY__DEFER_DELAY", "200ms".into()),
            (
                "HOOKLINE__DELIVERY__RETRY_SCHEDULE",
                "100ms,100ms,200ms,200ms,500ms,500ms,1s,1s,1s,1s".into(),
            ),
        ],
    )
    .await;
    let ordered = Receiver::start().await;
    let unordered = Receiver::start().await;
    // (event number, answer) in the order the receiver answered, and attempts so far.
    let answers: Arc<Mutex<Vec<(i64, u16)>>> = Arc::default();
    let attempts: Arc<Mutex<HashMap<i64, u64>>> = Arc::default();
    {
        let (answers, attempts) = (answers.clone(), attempts.clone());
        ordered.set_rule(Some(move |body: &[u8]| {
            let body: Value = serde_json::from_slice(body).ok()?;
            let n = body["data"]["n"].as_i64()?;
            let attempt = {
                let mut attempts = attempts.lock().expect("attempts");
                let count = attempts.entry(n).or_default();
                *count += 1;
                *count
            };
            // A fixed draw per event and attempt (splitmix64 of both, seed 18).
            let mut x = (n as u64) << 8 ^ attempt ^ 18_u64.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
            let status = if attempt == 1 && n % 97 == 13 {
                0
            } else if x.is_multiple_of(5) {
                500
            } else {
                204
            };
            answers.lock().expect("answers").push((n, status));
            Some(status)
        }));
    }
    let created = hookline
        .call(
            reqwest::Method::POST,
            "/v1/tenants/acme/endpoints",
            json!({"url": ordered.url(), "event_types": ["#"], "ordered": true}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    hookline.create_endpoint("acme", unordered.url()).await;

    // Accepted in batches, each event's key the next of twenty in turn.
    let key_of = |n: usize| n % KEYS;
    for first in (0..EVENTS).step_by(100) {
        let events: Vec<Value> = (first..first + 100)
            .map(|n| {
                json!({"id": format!("ord-{n}"), "type": "application.status.updated",
                       "ordering_key": format!("application:{}", key_of(n)),
                       "data": {"n": n}})
            })
            .collect();
        let answer = hookline
            .call(
                reqwest::Method::POST,
                "/v1/tenants/acme/events/batch",
                json!({ "events": events }),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer.body["results"]
                .as_array()
                .expect("results")
                .iter()
                .all(|r| r["id"].is_string()),
            "{}",
            answer.body
        );
    }
    eventually_within(
        "a third of the ordered events answered",
        CHAOS_PATIENCE,
        || async { answers.lock().expect("answers").len() > EVENTS / 3 },
    )
    .await;
    let victim = hookline.deliverers.remove(0);
    sigkill(&victim).await;

    unordered.wait_for(EVENTS).await;
    // Ordered events answered 2xx at least once.
    let answered = || {
        answers
            .lock()
            .expect("answers")
            .iter()
            .filter(|(_, status)| *status == 204)
            .map(|(n, _)| *n)
            .collect::<HashSet<_>>()
            .len()
    };
    let ordered_done_when_unordered_was = answered();
    eventually_within(
        "every ordered event answered 2xx",
        CHAOS_PATIENCE,
        || async { answered() == EVENTS },
    )
    .await;
    let answers = answers.lock().expect("answers").clone();
    let mut first_successes: HashMap<usize, Vec<i64>> = HashMap::new();
    let mut seen = HashSet::new();
    for (n, status) in &answers {
        if *status == 204 && seen.insert(*n) {
            first_successes
                .entry(key_of(usize::try_from(*n).expect("n")))
                .or_default()
                .push(*n);
        }
    }
    for key in 0..KEYS {
        let accepted: Vec<i64> = (0..EVENTS)
            .filter(|&n| key_of(n) == key)
            .map(|n| i64::try_from(n).expect("n"))
            .collect();
        assert_eq!(first_successes[&key], accepted, "key {key}");
    }
    let failures = answers.iter().filter(|(_, s)| *s != 204).count();
    eprintln!(
        "ordered: {} requests, {failures} failed or hung; unordered had all {EVENTS} when the ordered endpoint had {ordered_done_when_unordered_was}",
        answers.len()
    );
    assert!(
        failures > EVENTS / 10,
        "the receiver failed about a fifth of the attempts: {failures}"
    );
    assert!(
        ordered_done_when_unordered_was < EVENTS,
        "the unordered endpoint did not wait for the ordered one"
    );
    drop(victim);
    hookline.stop().await;
}

/// Issue 20: logs and metrics carry no payload values. The whole pipeline runs with
/// debug logging — delivered, retried, dead-lettered, published over HTTP and AMQP —
/// and neither process's output nor metrics contain the events' marker values.
#[tokio::test]
async fn logs_and_metrics_carry_no_payload_values() {
    let hookline = Installation::start_with(
        1,
        vec![
            ("HOOKLINE__LOG__FILTER", "debug".into()),
            ("HOOKLINE__LOG__FORMAT", "json".into()),
        ],
    )
    .await;
    let email = format!(
        "marker-{}@example.com",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let name = format!(
        "Zed Marker{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let flaky = Receiver::answering(&[500]).await;
    let gone = Receiver::start().await;
    gone.set_status(410);
    hookline.create_endpoint("acme", flaky.url()).await;
    hookline.create_endpoint("acme", gone.url()).await;
    let event = json!({"id": "marked-http", "type": "candidate.created",
        "data": {"candidate": {"email": email, "name": name}},
        "actor": {"name": name, "email": email}});
    let accepted = hookline
        .call(reqwest::Method::POST, "/v1/tenants/acme/events", event)
        .await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert!(
        publish_direct_body(
            &hookline.prefix,
            &json!({"tenant": "acme", "id": "marked-amqp", "type": "candidate.created",
                    "data": {"candidate": {"email": email, "name": name}}}),
        )
        .await
    );
    // Each event: one failed attempt and a retry at the flaky endpoint, a dead letter
    // at the gone one.
    eventually("both events delivered after their retries", || async {
        let delivered = delivered_ids(&flaky);
        delivered.contains("marked-http") && delivered.contains("marked-amqp")
    })
    .await;
    let dead = hookline
        .call(
            reqwest::Method::GET,
            "/v1/tenants/acme/dead-letters",
            Value::Null,
        )
        .await;
    let mut metrics = String::new();
    for admin in hookline.admins() {
        metrics.push_str(
            &hookline
                .http
                .get(format!("http://127.0.0.1:{admin}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics text"),
        );
    }
    let logs: Vec<PathBuf> = hookline.processes().map(|p| p.log.clone()).collect();
    hookline.stop().await;
    assert!(
        dead.body["data"].as_array().is_some_and(|d| !d.is_empty()),
        "a dead letter was made: {}",
        dead.body
    );
    let logs = output_of(&logs);
    assert!(logs.contains("\"level\":\"DEBUG\""), "debug logging was on");
    for marker in [&email, &name] {
        assert!(
            !logs.contains(marker.as_str()),
            "a log line carries {marker}"
        );
        assert!(
            !metrics.contains(marker.as_str()),
            "a metric carries {marker}"
        );
    }
}

/// Publishes one JSON body straight to the events exchange, with a confirm.
async fn publish_direct_body(prefix: &str, body: &Value) -> bool {
    let connection = lapin::Connection::connect(
        &env("HOOKLINE_TEST_AMQP_URL"),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("AMQP");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirm = channel
        .basic_publish(
            format!("{prefix}.events").as_str().into(),
            "candidate.created".into(),
            lapin::options::BasicPublishOptions::default(),
            body.to_string().as_bytes(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let _ = connection.close(200, "done".into()).await;
    confirm.is_ack()
}

/// One event that fails once, then succeeds: one trace, continuing the ATS's, with the
/// request and publish spans of ingest, the consume, match, delivery and both attempt
/// spans of the deliverer (the retry's delivery under the same message), exported to a
/// real OTLP receiver; the webhook receiver saw each attempt's own span in `traceparent`,
/// and the deliverer's JSON log lines carry the trace id. Nothing exported carries the
/// receiver's URL or the event's data.
#[tokio::test]
async fn one_event_is_one_trace_from_the_ats_through_both_services_to_the_receiver() {
    const ATS_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const ATS_SPAN_ID: &str = "00f067aa0ba902b7";
    let collector = OtlpCollector::start().await;
    let hookline = Installation::start_with(
        1,
        vec![
            ("HOOKLINE__TELEMETRY__OTLP_ENDPOINT", collector.endpoint()),
            // The SDK's batch interval (5 s by default), so the spans come soon.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("HOOKLINE__LOG__FILTER", "debug".into()),
            ("HOOKLINE__LOG__FORMAT", "json".into()),
        ],
    )
    .await;
    let receiver = Receiver::answering(&[500]).await;
    hookline.create_endpoint("acme", receiver.url()).await;
    let marker = format!("marker-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let accepted = hookline
        .http
        .post(format!(
            "http://127.0.0.1:{}/v1/tenants/acme/events",
            hookline.api
        ))
        .bearer_auth(TOKEN)
        .header("traceparent", format!("00-{ATS_TRACE_ID}-{ATS_SPAN_ID}-01"))
        .json(&json!({"id": "traced", "type": "candidate.created", "data": {"note": marker}}))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(accepted.status(), 202);
    let received = receiver.wait_for(2).await;
    let sent: Vec<TraceParent> = received
        .iter()
        .map(|request| {
            TraceParent::parse(request.header("traceparent").expect("a traceparent"))
                .expect("a valid traceparent")
        })
        .collect();

    let in_trace = |spans: &[ExportedSpan]| -> Vec<ExportedSpan> {
        spans
            .iter()
            .filter(|span| span.trace_id == ATS_TRACE_ID)
            .cloned()
            .collect()
    };
    eventually("both attempts' spans exported", || async {
        let spans = in_trace(&collector.spans());
        spans.iter().filter(|s| s.name == "webhook attempt").count() == 2
            && spans.iter().filter(|s| s.name == "deliver").count() == 2
    })
    .await;
    let deliverer_logs: Vec<PathBuf> = hookline.deliverers.iter().map(|p| p.log.clone()).collect();
    hookline.stop().await;
    let spans = in_trace(&collector.spans());
    let one = |name: &str| -> ExportedSpan {
        let found: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
        found[0].clone()
    };
    let request = one("ingest.event");
    let publish = one("amqp publish");
    let consume = one("amqp consume");
    let matching = one("match");
    assert_eq!(request.service, "hookline-ingest");
    assert_eq!(
        request.parent_span_id, ATS_SPAN_ID,
        "ingest joins the ATS's trace"
    );
    assert_eq!(request.attribute("http.response.status_code"), Some("202"));
    assert_eq!(publish.parent_span_id, request.span_id);
    assert_eq!(publish.attribute("outcome"), Some("confirmed"));
    assert_eq!(consume.service, "hookline-deliverer");
    assert_eq!(
        consume.parent_span_id, publish.span_id,
        "the message's traceparent names the publish span"
    );
    assert_eq!(consume.attribute("event.id"), Some("traced"));
    assert_eq!(matching.parent_span_id, consume.span_id);
    assert_eq!(matching.attribute("matched"), Some("1"));
    let deliveries: Vec<&ExportedSpan> = spans.iter().filter(|s| s.name == "deliver").collect();
    assert!(
        deliveries
            .iter()
            .all(|d| d.parent_span_id == consume.span_id),
        "the first delivery and the retry both hang off the message: {deliveries:#?}"
    );
    let mut outcomes: Vec<&str> = deliveries
        .iter()
        .filter_map(|d| d.attribute("outcome"))
        .collect();
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["delivered", "retry"]);
    let mut attempts: Vec<&ExportedSpan> = spans
        .iter()
        .filter(|s| s.name == "webhook attempt")
        .collect();
    attempts.sort_by_key(|a| a.attribute("attempt").map(str::to_owned));
    assert_eq!(
        attempts[0].attribute("http.response.status_code"),
        Some("500")
    );
    assert_eq!(attempts[0].attribute("error.class"), Some("http_error"));
    assert_eq!(
        attempts[1].attribute("http.response.status_code"),
        Some("204")
    );
    for (attempt, traceparent) in attempts.iter().zip(&sent) {
        assert_eq!(
            attempt.span_id,
            format!("{:016x}", traceparent.parent_id),
            "the receiver saw the attempt's own span"
        );
        assert!(
            deliveries
                .iter()
                .any(|d| d.span_id == attempt.parent_span_id),
            "an attempt is a span of its delivery"
        );
    }
    assert!(
        sent.iter().all(|t| t.sampled),
        "the ATS's sampled flag is kept"
    );
    let everything = format!("{:?}", collector.spans());
    assert!(!everything.contains(&marker), "no payload value in a span");
    assert!(
        !everything.contains(&receiver.addr.port().to_string()),
        "no receiver URL in a span"
    );

    let deliverer_log = output_of(&deliverer_logs);
    assert!(
        deliverer_log
            .lines()
            .any(|line| line.contains("delivery attempt")
                && line.contains(&format!("\"trace_id\":\"{ATS_TRACE_ID}\""))),
        "the attempt's log line carries the trace id"
    );
}
