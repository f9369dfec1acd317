//! `make bench`: Hookline measured against the broker ceiling on the same machine, in the
//! same run. Starts the release binaries as child processes (so their peak RSS can be
//! read), a minimal receiver and a load generator in this process, and prints one line per
//! scenario — `name: value unit (ratio)` — plus the same as JSON under `target/bench/`.

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::StatusCode;
use clap::Parser;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
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

#[derive(Debug, Parser)]
struct Args {
    /// Events for the throughput scenarios (1 endpoint, direct AMQP, isolation).
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Events for the fan-out scenario (each goes to 10 endpoints).
    #[arg(long, default_value_t = 10_000)]
    fanout_events: usize,
    /// Messages for the raw broker ceiling.
    #[arg(long, default_value_t = 50_000)]
    ceiling_messages: usize,
    /// Concurrent HTTP clients in closed-loop scenarios: each waits for its 202, so also
    /// the most publisher confirms ingest can have outstanding.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Fixed arrival rate (events/s) of the latency scenario, and its duration.
    #[arg(long, default_value_t = 1_000)]
    latency_rate: u64,
    #[arg(long, default_value = "30s", value_parser = humantime_parse)]
    latency_duration: Duration,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Queue type, as Hookline is configured (quorum is the production default).
    #[arg(long, default_value = "quorum")]
    queue_type: String,
    #[arg(long, default_value_t = 200)]
    prefetch: u16,
    /// Run only these scenarios (comma-separated: ceiling, single, fanout, mixed, direct,
    /// latency, isolation, held); all by default. Ratios to a scenario left out are omitted.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Events held behind an open circuit in the held-backlog scenario, and how long
    /// its cost is measured after the last of them was accepted.
    #[arg(long, default_value_t = 20_000)]
    held_events: usize,
    #[arg(long, default_value = "30s", value_parser = humantime_parse)]
    held_window: Duration,
    /// Pairs of isolation runs: each hanging run beside a run of (2); the median of the
    /// pairs' ratios is reported.
    #[arg(long, default_value_t = 7)]
    isolation_pairs: usize,
    /// Runs of (2), each between two ceiling runs; the median ratio is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

fn humantime_parse(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))
}

#[derive(Debug, Clone)]
struct Brokers {
    amqp_url: String,
    redis_url: String,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Line {
    name: String,
    value: f64,
    unit: String,
    ratio: Option<f64>,
    ratio_to: Option<String>,
    note: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let brokers = Brokers {
        amqp_url: std::env::var("HOOKLINE__AMQP__URL")
            .context("HOOKLINE__AMQP__URL (run via `make bench`)")?,
        redis_url: std::env::var("HOOKLINE__REDIS__URL")
            .context("HOOKLINE__REDIS__URL (run via `make bench`)")?,
    };
    let mut report = Vec::<Line>::new();
    let started = Instant::now();

    // The ceiling and (2) alternate — C S C S … C — and each run of (2) is divided by the
    // mean of the ceilings either side of it; the report takes the median of those
    // ratios. This machine's speed drifts by ±15 % within minutes, and one ceiling
    // measured long before or after a scenario lets that drift into the ratio.
    let mut ceilings = Vec::new();
    let mut singles = Vec::new();
    if args.wants("ceiling") {
        eprintln!(
            "[1/8] ceiling: raw RabbitMQ publish+consume, {} × 1 KiB",
            args.ceiling_messages
        );
        ceilings.push(ceiling(&brokers, &args, CEILING_IN_FLIGHT).await?);
    }
    if args.wants("single") {
        for round in 1..=args.repeat {
            eprintln!(
                "[2/8] throughput to 1 endpoint: {} events over HTTP (run {round} of {})",
                args.events, args.repeat
            );
            singles.push(
                throughput(
                    &brokers,
                    &args,
                    Scenario::Http {
                        endpoints: 1,
                        events: args.events,
                        second: Second::None,
                        formats: Formats::Json,
                    },
                )
                .await?,
            );
            if !ceilings.is_empty() {
                eprintln!("[1/8] ceiling again");
                ceilings.push(ceiling(&brokers, &args, CEILING_IN_FLIGHT).await?);
            }
        }
    }

    let ceiling_rate = (!ceilings.is_empty()).then(|| {
        let rates: Vec<f64> = ceilings.iter().map(|(rate, _)| *rate).collect();
        let median_rate = median(&rates);
        report.push(line(
            "ceiling",
            median_rate,
            "msgs/s",
            None,
            Some("median of the runs around (2)"),
        ));
        report.push(line(
            "ceiling_runs",
            rates.len() as f64,
            "runs",
            None,
            Some(&format!("{rates:.0?}")),
        ));
        for (process, us) in &ceilings[0].1 {
            report.push(line(
                &format!("ceiling_cpu_per_message_{process}"),
                *us,
                "µs",
                None,
                Some("during the first ceiling run"),
            ));
        }
        median_rate
    });
    let against_ceiling = ceiling_rate.map(|c| (c, "ceiling"));

    // Each run of (2) against the ceilings either side of it.
    let ratios: Vec<f64> = singles
        .iter()
        .zip(ceilings.windows(2))
        .map(|(single, pair)| single.events_per_s / ((pair[0].0 + pair[1].0) / 2.0))
        .collect();
    // The run whose ratio is the median stands for (2): its figures are reported.
    let representative = if ratios.is_empty() {
        singles.len().checked_sub(1)
    } else {
        let wanted = median(&ratios);
        ratios.iter().position(|ratio| *ratio == wanted)
    };
    let single = representative
        .and_then(|index| singles.get(index))
        .map(|single| {
            let mut throughput = line(
                "throughput_1_endpoint",
                single.events_per_s,
                "events/s",
                against_ceiling,
                None,
            );
            if !ratios.is_empty() {
                throughput.ratio = Some(median(&ratios));
                throughput.ratio_to = Some("ceiling".into());
                throughput.note = Some(format!(
                    "median run; each run over the ceilings either side: {ratios:.2?}"
                ));
            }
            report.push(throughput);
            report.push(line(
                "throughput_1_endpoint_runs",
                singles.len() as f64,
                "runs",
                None,
                Some(&format!(
                    "{:.0?} events/s, {ratios:.2?} of the ceilings either side",
                    singles.iter().map(|s| s.events_per_s).collect::<Vec<_>>()
                )),
            ));
            report_cpu(
                &mut report,
                "cpu_per_event",
                single,
                "during throughput_1_endpoint",
            );
            report.push(line(
                "ingest_peak_rss",
                mib(single.ingest_rss),
                "MiB",
                None,
                Some("during throughput_1_endpoint"),
            ));
            report.push(line(
                "deliverer_peak_rss",
                mib(single.deliverer_rss),
                "MiB",
                None,
                Some("during throughput_1_endpoint"),
            ));
            single.events_per_s
        });

    if let (Some(ceiling_rate), Some(single)) = (ceiling_rate, single) {
        // Not a denominator, an explanation: ingest answers each request after its
        // confirm, so it can never have more confirms outstanding than there are
        // clients, and RabbitMQ spends more per message when they come in smaller
        // batches. This is the broker alone at that depth.
        eprintln!("[1/8] ceiling with {} confirms outstanding", args.clients);
        let (shallow, cpu) = ceiling(&brokers, &args, args.clients).await?;
        report.push(line(
            "ceiling_at_client_depth",
            shallow,
            "msgs/s",
            Some((ceiling_rate, "ceiling")),
            Some("the ceiling with as many confirms outstanding as the load generator has clients"),
        ));
        if let Some((_, us)) = cpu.iter().find(|(process, _)| *process == "rabbitmq") {
            report.push(line(
                "ceiling_at_client_depth_cpu_per_message_rabbitmq",
                *us,
                "µs",
                None,
                None,
            ));
        }
        report.push(line(
            "throughput_1_endpoint_vs_client_depth",
            single,
            "events/s",
            Some((shallow, "ceiling_at_client_depth")),
            None,
        ));
    }

    let fanout_in = |formats| Scenario::Http {
        endpoints: 10,
        events: args.fanout_events,
        second: Second::None,
        formats,
    };
    let fanout = if args.wants("fanout") {
        eprintln!(
            "[3/8] fan-out to 10 endpoints: {} events over HTTP",
            args.fanout_events
        );
        let fanout = throughput(&brokers, &args, fanout_in(Formats::Json)).await?;
        report.push(line(
            "fanout_10_deliveries",
            fanout.deliveries_per_s,
            "deliveries/s",
            against_ceiling,
            None,
        ));
        report.push(line(
            "fanout_10_events",
            fanout.events_per_s,
            "events/s",
            against_ceiling,
            None,
        ));
        report_cpu(
            &mut report,
            "fanout_cpu_per_event",
            &fanout,
            "CPU per event (10 deliveries, 1 rendering)",
        );
        Some(fanout.deliveries_per_s)
    } else {
        None
    };

    if args.wants("mixed") {
        eprintln!(
            "[3b/8] fan-out to 10 endpoints in 8 formats (6 presets, 2 templates): {} events",
            args.fanout_events
        );
        let mixed = throughput(&brokers, &args, fanout_in(Formats::Mixed)).await?;
        report.push(line(
            "fanout_10_mixed_formats_deliveries",
            mixed.deliveries_per_s,
            "deliveries/s",
            fanout.map(|f| (f, "fanout_10_deliveries")),
            None,
        ));
        report_cpu(
            &mut report,
            "fanout_mixed_cpu_per_event",
            &mixed,
            "CPU per event (10 deliveries, 8 renderings)",
        );
    }

    if args.wants("direct") {
        eprintln!(
            "[4/8] direct AMQP ingest: {} events published to the exchange",
            args.events
        );
        let direct = throughput(
            &brokers,
            &args,
            Scenario::Amqp {
                events: args.events,
            },
        )
        .await?;
        report.push(line(
            "direct_amqp_1_endpoint",
            direct.events_per_s,
            "events/s",
            against_ceiling,
            None,
        ));
        report_cpu(
            &mut report,
            "direct_cpu_per_event",
            &direct,
            "during direct_amqp_1_endpoint",
        );
    }

    if args.wants("latency") {
        eprintln!(
            "[5/8] latency at {} events/s for {:?}",
            args.latency_rate, args.latency_duration
        );
        let latency = latency(&brokers, &args).await?;
        for (name, value) in [
            ("latency_p50", latency.0),
            ("latency_p99", latency.1),
            ("latency_p999", latency.2),
        ] {
            report.push(line(
                name,
                value,
                "ms",
                None,
                Some("send to receipt, same clock"),
            ));
        }
    }

    if args.wants("isolation") {
        eprintln!(
            "[6/8] isolation: throughput to 1 endpoint while another tenant's endpoint hangs"
        );
        // Alternating with runs of (2): the machine's speed drifts by more than the effect
        // measured, so each hanging run is compared with the run of (2) next to it and the
        // median of those ratios is reported.
        // One control of the same traffic with the second endpoint answering separates the
        // hanging endpoint's effect from the extra events of its tenant.
        let mut isolated_runs = Vec::new();
        let mut beside_runs = Vec::new();
        let mut control_runs = Vec::new();
        for round in 0..args.isolation_pairs.max(1) {
            let mut kinds = vec![
                (Second::Hanging, &mut isolated_runs),
                (Second::None, &mut beside_runs),
            ];
            // Every other pair runs (2) first, so a drift in one direction does not
            // favour either side of the pairs.
            if round % 2 == 1 {
                kinds.reverse();
            }
            if round == 0 {
                kinds.push((Second::Answering, &mut control_runs));
            }
            for (second, runs) in kinds {
                let run = throughput(
                    &brokers,
                    &args,
                    Scenario::Http {
                        endpoints: 1,
                        events: args.events,
                        second,
                        formats: Formats::Json,
                    },
                )
                .await?;
                runs.push(run);
            }
        }
        let rates = |runs: &[Throughput]| runs.iter().map(|r| r.events_per_s).collect::<Vec<_>>();
        let isolated = median_run(&isolated_runs);
        let control = median_run(&control_runs);
        // Each hanging run over the run of (2) beside it, as (2) is over its ceilings.
        let pair_ratios: Vec<f64> = isolated_runs
            .iter()
            .zip(&beside_runs)
            .map(|(hanging, beside)| hanging.events_per_s / beside.events_per_s)
            .collect();
        let mut healthy = line(
            "isolation_healthy_throughput",
            isolated.events_per_s,
            "events/s",
            None,
            Some(
                "median run; a second tenant's endpoint never answers (15 s timeout); 1 in 20 events is theirs, on top",
            ),
        );
        healthy.ratio = Some(median(&pair_ratios));
        healthy.ratio_to = Some("throughput_1_endpoint run alongside".into());
        report.push(healthy);
        report.push(line(
            "isolation_runs",
            isolated_runs.len() as f64,
            "runs",
            None,
            Some(&format!(
                "{:.0?} events/s hanging, {:.0?} of (2) alongside (each pair {pair_ratios:.2?}), {:.0?} with the second endpoint answering",
                rates(&isolated_runs),
                rates(&beside_runs),
                rates(&control_runs)
            )),
        ));
        if let Some(single) = single {
            report.push(line(
                "isolation_vs_first_throughput_1_endpoint",
                isolated.events_per_s,
                "events/s",
                Some((single, "throughput_1_endpoint")),
                Some("against (2) as measured minutes earlier: moved by the machine's drift"),
            ));
        }
        report.push(line(
            "isolation_vs_same_load",
            isolated.events_per_s,
            "events/s",
            Some((
                control.events_per_s,
                "the same traffic with the second endpoint answering",
            )),
            Some("separates the hanging endpoint's effect from its tenant's extra load"),
        ));
        report_cpu(
            &mut report,
            "isolation_cpu_per_event",
            isolated,
            "CPU per healthy event, the hanging tenant's work included",
        );
        report_cpu(
            &mut report,
            "isolation_control_cpu_per_event",
            control,
            "CPU per healthy event with the second endpoint answering",
        );
        let peak = |rss: fn(&Throughput) -> u64| isolated_runs.iter().map(rss).max().unwrap_or(0);
        report.push(line(
            "isolation_ingest_peak_rss",
            mib(peak(|run| run.ingest_rss)),
            "MiB",
            None,
            Some("the highest of the hanging runs"),
        ));
        report.push(line(
            "isolation_deliverer_peak_rss",
            mib(peak(|run| run.deliverer_rss)),
            "MiB",
            None,
            Some("the highest of the hanging runs"),
        ));
    }

    if args.wants("held") {
        eprintln!(
            "[7/8] held backlog: {} events for an endpoint that refuses connections, then {:?} idle",
            args.held_events, args.held_window
        );
        let held = held_backlog(&brokers, &args).await?;
        let window_s = args.held_window.as_secs_f64();
        let core_share = |us: f64| us / window_s / 1e4;
        report.push(line(
            "held_backlog_cpu",
            core_share(held.cpu_us.iter().map(|(_, us)| us).sum()),
            "% of a core",
            None,
            Some("deliverer, Redis and RabbitMQ while nothing but the held deliveries exists"),
        ));
        for (process, us) in &held.cpu_us {
            report.push(line(
                &format!("held_backlog_cpu_{process}"),
                core_share(*us),
                "% of a core",
                None,
                None,
            ));
        }
        report.push(line(
            "held_backlog_deferrals",
            held.deferrals / window_s,
            "per s",
            None,
            Some("held back without an attempt within the window, including once each attempt that failed before the circuit opened and came back on its retry schedule"),
        ));
        report.push(line(
            "held_backlog_size",
            held.pool as f64,
            "deliveries",
            None,
            Some("in the retry pool at the end of the window"),
        ));
    }

    eprintln!("[8/8] done in {:?}", started.elapsed());
    println!();
    println!(
        "Hookline benchmark (2 cores shared by broker, Redis, Hookline, receiver and load generator)"
    );
    for entry in &report {
        let ratio = match (entry.ratio, &entry.ratio_to) {
            (Some(ratio), Some(to)) => format!(" ({ratio:.2} of {to})"),
            _ => String::new(),
        };
        // Repeated runs show what each gave, so the spread is on the page.
        let runs = match (&entry.note, entry.unit == "runs") {
            (Some(note), true) => format!(": {note}"),
            _ => String::new(),
        };
        println!(
            "{}: {:.1} {}{}{}",
            entry.name, entry.value, entry.unit, ratio, runs
        );
    }
    write_json(&report, &args)?;
    Ok(())
}

fn line(
    name: &str,
    value: f64,
    unit: &str,
    ratio: Option<(f64, &str)>,
    note: Option<&str>,
) -> Line {
    Line {
        name: name.into(),
        value,
        unit: unit.into(),
        ratio: ratio.map(|(denominator, _)| value / denominator),
        ratio_to: ratio.map(|(_, to)| to.into()),
        note: note.map(Into::into),
    }
}

fn report_cpu(report: &mut Vec<Line>, prefix: &str, run: &Throughput, note: &str) {
    for (process, us) in &run.cpu_per_event {
        report.push(line(
            &format!("{prefix}_{process}"),
            *us,
            "µs",
            None,
            Some(note),
        ));
    }
}

/// The run with the median rate (the lower middle one for an even count).
fn median_run(runs: &[Throughput]) -> &Throughput {
    let mut sorted: Vec<&Throughput> = runs.iter().collect();
    sorted.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
    sorted[(sorted.len() - 1) / 2]
}

/// The middle value (the lower of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get((sorted.len().saturating_sub(1)) / 2)
        .copied()
        .unwrap_or(0.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn write_json(report: &[Line], args: &Args) -> anyhow::Result<()> {
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let document = json!({
        "unix_time": stamp,
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "parameters": {"events": args.events, "fanout_events": args.fanout_events, "clients": args.clients,
                        "latency_rate": args.latency_rate, "queue_type": args.queue_type, "prefetch": args.prefetch},
        "results": report,
    });
    let text = serde_json::to_string_pretty(&document)?;
    std::fs::write(dir.join(format!("bench-{stamp}.json")), &text)?;
    std::fs::write(dir.join("latest.json"), &text)?;
    eprintln!("wrote target/bench/latest.json and target/bench/bench-{stamp}.json");
    Ok(())
}

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
const CEILING_IN_FLIGHT: usize = 1000;

/// Raw broker ceiling: publish with pipelined confirms and consume with one manual ack per
/// message, together, on the queue type and prefetch Hookline uses.
async fn ceiling(
    brokers: &Brokers,
    args: &Args,
    in_flight_limit: usize,
) -> anyhow::Result<(f64, Vec<(&'static str, f64)>)> {
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
    Ok((rate, cpu_per_message))
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

/// A receiver that counts, timestamps, optionally records latencies, or hangs.
#[derive(Debug, Default)]
struct Counter {
    received: AtomicUsize,
    target: AtomicUsize,
    last_us: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    record_latency: std::sync::atomic::AtomicBool,
    reached: Notify,
}

impl Counter {
    fn count(&self, body: &[u8]) {
        if self.record_latency.load(Ordering::Relaxed)
            && let Ok(value) = serde_json::from_slice::<Value>(body)
            && let Some(sent) = value["data"]["sent_at_us"].as_u64()
        {
            let latency = now_us().saturating_sub(sent);
            self.latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(latency);
        }
        self.last_us.store(now_us(), Ordering::Relaxed);
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
    deliverer: Child,
    http: reqwest::Client,
    prefix: String,
}

async fn start_services(
    brokers: &Brokers,
    args: &Args,
    scenario: &str,
) -> anyhow::Result<Services> {
    let prefix = format!("bench-{scenario}-{}", std::process::id());
    let logs = PathBuf::from("target/bench/logs");
    std::fs::create_dir_all(&logs)?;
    let spawn = |binary: &str| -> anyhow::Result<Child> {
        let log = std::fs::File::create(logs.join(format!("{scenario}-{binary}.log")))?;
        let mut command = Command::new(args.bin_dir.join(binary));
        command
            .env("HOOKLINE__PREFIX", &prefix)
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
    };
    let services = Services {
        ingest: spawn("hookline-ingest")?,
        deliverer: spawn("hookline-deliverer")?,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()?,
        prefix,
    };
    for admin in [INGEST_ADMIN, DELIVERER_ADMIN] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = services
                .http
                .get(format!("http://{admin}/readyz"))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{admin} did not become ready; see target/bench/logs");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(services)
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
        let peaks = (peak_rss(self.ingest.id()), peak_rss(self.deliverer.id()));
        for child in [&self.ingest, &self.deliverer] {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        for child in [&mut self.ingest, &mut self.deliverer] {
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
enum Second {
    None,
    /// Its endpoint never answers (until the delivery timeout).
    Hanging,
    /// Its endpoint answers at once: the control for `Hanging`.
    Answering,
}

/// One in this many events is the second tenant's.
const SECOND_TENANT_SHARE: usize = 20;

enum Scenario {
    Http {
        endpoints: usize,
        events: usize,
        second: Second,
        formats: Formats,
    },
    Amqp {
        events: usize,
    },
}

/// What the healthy tenant's endpoints ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Formats {
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

struct Throughput {
    events_per_s: f64,
    deliveries_per_s: f64,
    ingest_rss: u64,
    deliverer_rss: u64,
    /// CPU µs per event, by process, while the scenario ran.
    cpu_per_event: Vec<(&'static str, f64)>,
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
        ("deliverer", cpu_us(services.deliverer.id())),
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
fn event_bytes(padding: &str) -> Vec<u8> {
    format!(
        r#"{{"type":"profile.parsing.success","data":{{"sent_at_us":{},"padding":"{padding}"}}}}"#,
        now_us()
    )
    .into_bytes()
}

async fn throughput(
    brokers: &Brokers,
    args: &Args,
    scenario: Scenario,
) -> anyhow::Result<Throughput> {
    let name = match scenario {
        Scenario::Http {
            endpoints: 1,
            second: Second::None,
            ..
        } => "single",
        Scenario::Http {
            second: Second::Hanging,
            ..
        } => "isolation",
        Scenario::Http {
            second: Second::Answering,
            ..
        } => "isolation-control",
        Scenario::Http {
            formats: Formats::Mixed,
            ..
        } => "fanout-mixed",
        Scenario::Http { .. } => "fanout",
        Scenario::Amqp { .. } => "amqp",
    };
    let services = start_services(brokers, args, name).await?;
    let counter = Arc::new(Counter::default());
    let base = start_receiver(counter.clone()).await?;
    let (endpoints, events, second, formats) = match scenario {
        Scenario::Http {
            endpoints,
            events,
            second,
            formats,
        } => (endpoints, events, second, formats),
        Scenario::Amqp { events } => (1, events, Second::None, Formats::Json),
    };
    for index in 0..endpoints {
        let format = match formats {
            Formats::Json => json!({}),
            Formats::Mixed => mixed_format(index),
        };
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
    match scenario {
        Scenario::Amqp { events } => publish_direct(brokers, &services.prefix, events).await?,
        Scenario::Http { .. } => {
            let total = if with_second {
                events + events / (SECOND_TENANT_SHARE - 1)
            } else {
                events
            };
            send_over_http(args.clients, total, move |index| {
                if with_second && index % SECOND_TENANT_SHARE == SECOND_TENANT_SHARE - 1 {
                    "second"
                } else {
                    "healthy"
                }
            })
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
                    .send_event(tenant_of(index), event_bytes(&padding))
                    .await?;
            }
        }));
    }
    for client in running {
        client.await??;
    }
    Ok(())
}

struct HeldBacklog {
    /// CPU µs by process over the window.
    cpu_us: Vec<(&'static str, f64)>,
    /// Deliveries held back without an attempt during the window.
    deferrals: f64,
    /// Deliveries in the retry pool at the end.
    pool: u64,
}

/// What a backlog held behind an open circuit costs while nothing else happens: events
/// for an endpoint that refuses connections (its circuit opens after a few failures),
/// then the CPU and the deferrals over a window in which no event arrives.
async fn held_backlog(brokers: &Brokers, args: &Args) -> anyhow::Result<HeldBacklog> {
    let services = start_services(brokers, args, "held").await?;
    // A port nothing listens on: every attempt is refused at once.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    services
        .create_endpoint("held", format!("http://{closed}/gone"))
        .await?;
    send_over_http(args.clients, args.held_events, |_| "held").await?;
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
    let pool: u64 = redis::cmd("ZCARD")
        .arg(hookline_shared::store::Keyspace::new(&services.prefix).retry_due())
        .query_async(&mut redis)
        .await?;
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
        deliverer_metric(services, attempts, &[r#"outcome="circuit_open""#]).await?
            + deliverer_metric(services, attempts, &[r#"outcome="endpoint_busy""#]).await?,
    )
}

/// The sum of a deliverer metric's series whose labels contain every one of `labels`.
async fn deliverer_metric(services: &Services, name: &str, labels: &[&str]) -> anyhow::Result<f64> {
    let text = services
        .http
        .get(format!("http://{DELIVERER_ADMIN}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
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
        use http_body_util::BodyExt;
        let request = axum::http::Request::post(format!("/v1/tenants/{tenant}/events"))
            .header(axum::http::header::HOST, API)
            .header(axum::http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        // Read the answer to the end so the connection can carry the next request.
        let answer = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::ACCEPTED {
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
async fn latency(brokers: &Brokers, args: &Args) -> anyhow::Result<(f64, f64, f64)> {
    let services = start_services(brokers, args, "latency").await?;
    let counter = Arc::new(Counter::default());
    counter.record_latency.store(true, Ordering::Relaxed);
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
    let mut latencies = std::mem::take(
        &mut *counter
            .latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    latencies.sort_unstable();
    let quantile = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] as f64 / 1000.0
    };
    Ok((quantile(0.5), quantile(0.99), quantile(0.999)))
}
