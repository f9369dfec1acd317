//! `make bench`: Hookline measured against the broker ceiling on the same machine, in the
//! same run. Starts the release binaries as child processes (so their peak RSS can be
//! read), a minimal receiver and a load generator in this process, and prints one line per
//! scenario — `name: value unit (ratio)` — plus the same as JSON under `target/bench/`.
//!
//! # Layout
//! - `main.rs`: the flags and the table of scenarios, run in order.
//! - `scenarios.rs`: one function per scenario — what it runs and the lines it reports.
//! - `paired.rs`: the order of paired runs and their ratios, the defence against drift.
//! - `drain.rs`: the noisy neighbour's figures from the arrivals its receivers kept.
//! - `harness.rs`: services, receiver, load generators, the raw broker ceiling, CPU and
//!   memory readings.
//! - `report.rs`: the lines, printed and written as JSON.

mod drain;
mod harness;
mod paired;
mod report;
mod scenarios;

use anyhow::Context;
use clap::Parser;
use futures::future::BoxFuture;
use report::Report;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
pub struct Args {
    /// Events for the throughput scenarios (1 endpoint, direct AMQP, isolation).
    #[arg(long, default_value_t = 50_000)]
    pub events: usize,
    /// Events for the fan-out scenario (each goes to 10 endpoints).
    #[arg(long, default_value_t = 10_000)]
    pub fanout_events: usize,
    /// Messages for the raw broker ceiling.
    #[arg(long, default_value_t = 50_000)]
    pub ceiling_messages: usize,
    /// Concurrent HTTP clients in closed-loop scenarios: each waits for its 202, so also
    /// the most publisher confirms ingest can have outstanding.
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// Fixed arrival rate (events/s) of the latency scenario, and its duration.
    #[arg(long, default_value_t = 1_000)]
    pub latency_rate: u64,
    #[arg(long, default_value = "30s", value_parser = humantime_parse)]
    pub latency_duration: Duration,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Queue type, as Hookline is configured (quorum is the production default).
    #[arg(long, default_value = "quorum")]
    pub queue_type: String,
    #[arg(long, default_value_t = 200)]
    pub prefetch: u16,
    /// Run only these scenarios (comma-separated: ceiling, single, batch, fanout, mixed,
    /// ordered, direct, latency, isolation, held, noisy_neighbour, bulk_lane); all by default. Ratios to a
    /// scenario left out are omitted.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Events held behind an open circuit in the held-backlog scenario, and how long
    /// its cost is measured after the last of them was accepted.
    #[arg(long, default_value_t = 20_000)]
    pub held_events: usize,
    #[arg(long, default_value = "30s", value_parser = humantime_parse)]
    pub held_window: Duration,
    /// Events per request in the batch scenario, and its closed-loop clients (each waits
    /// for its batch's answer, so `batch_size × batch_clients` events are in flight).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_clients: usize,
    /// Pairs of isolation runs: each hanging run beside a run of (2); the median of the
    /// pairs' ratios is reported.
    #[arg(long, default_value_t = 7)]
    pub isolation_pairs: usize,
    /// Events of one tenant queued with no deliverer running in the noisy-neighbour
    /// scenario, and the fixed rate (events/s) at which a quiet tenant sends while they
    /// drain.
    #[arg(long, default_value_t = 30_000)]
    pub noisy_backlog: usize,
    #[arg(long, default_value_t = 20)]
    pub noisy_quiet_rate: u64,
    /// Runs of (2), each between two ceiling runs; the median ratio is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
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
pub struct Brokers {
    pub amqp_url: String,
    pub redis_url: String,
}

/// What every scenario is given.
#[derive(Debug)]
pub struct Bench {
    pub args: Args,
    pub brokers: Brokers,
}

/// One entry of the benchmark: run when `--only` names any of `names` (or is absent), it
/// measures and pushes its lines to the report. A scenario that compares itself with an
/// earlier one reads that one's line from the report.
struct Scenario {
    names: &'static [&'static str],
    run: for<'a> fn(&'a Bench, &'a mut Report) -> BoxFuture<'a, anyhow::Result<()>>,
}

/// In the order they run and report.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        names: &["ceiling", "single"],
        run: |bench, report| Box::pin(scenarios::ceiling_and_single(bench, report)),
    },
    Scenario {
        names: &["ceiling", "single"],
        run: |bench, report| Box::pin(scenarios::ceiling_at_client_depth(bench, report)),
    },
    Scenario {
        names: &["batch"],
        run: |bench, report| Box::pin(scenarios::batch(bench, report)),
    },
    Scenario {
        names: &["ordered"],
        run: |bench, report| Box::pin(scenarios::ordered(bench, report)),
    },
    Scenario {
        names: &["fanout"],
        run: |bench, report| Box::pin(scenarios::fanout(bench, report)),
    },
    Scenario {
        names: &["mixed"],
        run: |bench, report| Box::pin(scenarios::mixed_formats(bench, report)),
    },
    Scenario {
        names: &["direct"],
        run: |bench, report| Box::pin(scenarios::direct_amqp(bench, report)),
    },
    Scenario {
        names: &["latency"],
        run: |bench, report| Box::pin(scenarios::latency(bench, report)),
    },
    Scenario {
        names: &["isolation"],
        run: |bench, report| Box::pin(scenarios::isolation(bench, report)),
    },
    Scenario {
        names: &["held"],
        run: |bench, report| Box::pin(scenarios::held_backlog(bench, report)),
    },
    Scenario {
        names: &["noisy_neighbour"],
        run: |bench, report| Box::pin(scenarios::noisy_neighbour(bench, report)),
    },
    Scenario {
        names: &["bulk_lane"],
        run: |bench, report| Box::pin(scenarios::bulk_lane(bench, report)),
    },
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let brokers = Brokers {
        amqp_url: std::env::var("HOOKLINE__AMQP__URL")
            .context("HOOKLINE__AMQP__URL (run via `make bench`)")?,
        redis_url: std::env::var("HOOKLINE__REDIS__URL")
            .context("HOOKLINE__REDIS__URL (run via `make bench`)")?,
    };
    let bench = Bench { args, brokers };
    let mut report = Report::default();
    let started = Instant::now();
    for scenario in SCENARIOS {
        if scenario.names.iter().any(|name| bench.args.wants(name)) {
            (scenario.run)(&bench, &mut report).await?;
        }
    }
    eprintln!("[8/8] done in {:?}", started.elapsed());
    report.print();
    report.write_json(&bench.args)?;
    Ok(())
}
