//! The report: one line per figure, `name: value unit (ratio)`, printed at the end and
//! written as JSON under `target/bench/` to compare runs.

use crate::Args;
use crate::harness::Throughput;
use serde_json::json;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Line {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub ratio: Option<f64>,
    pub ratio_to: Option<String>,
    pub note: Option<String>,
}

/// The figures so far, in the order they were measured. A scenario compares itself with
/// an earlier one by reading that one's line: a ratio to a scenario left out by `--only`
/// is then omitted.
#[derive(Debug, Default)]
pub struct Report {
    lines: Vec<Line>,
}

impl Report {
    pub fn push(&mut self, line: Line) {
        self.lines.push(line);
    }

    /// The value of the line named `name`, if that scenario ran.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|line| line.name == name)
            .map(|line| line.value)
    }

    /// The value of line `name` as a denominator: `(value, name)`.
    pub fn against<'a>(&self, name: &'a str) -> Option<(f64, &'a str)> {
        self.value(name).map(|value| (value, name))
    }

    /// One line per process: the CPU µs it spent per event during `run`.
    pub fn cpu(&mut self, prefix: &str, run: &Throughput, note: &str) {
        for (process, us) in &run.cpu_per_event {
            self.push(line(
                &format!("{prefix}_{process}"),
                *us,
                "µs",
                None,
                Some(note),
            ));
        }
    }

    pub fn print(&self) {
        println!();
        println!(
            "Hookline benchmark (2 cores shared by broker, Redis, Hookline, receiver and load generator)"
        );
        for entry in &self.lines {
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
    }

    pub fn write_json(&self, args: &Args) -> anyhow::Result<()> {
        let dir = PathBuf::from("target/bench");
        std::fs::create_dir_all(&dir)?;
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let document = json!({
            "unix_time": stamp,
            "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
            "parameters": {"events": args.events, "fanout_events": args.fanout_events, "clients": args.clients,
                            "latency_rate": args.latency_rate, "queue_type": args.queue_type, "prefetch": args.prefetch,
                            "noisy_backlog": args.noisy_backlog, "noisy_quiet_rate": args.noisy_quiet_rate},
            "results": self.lines,
        });
        let text = serde_json::to_string_pretty(&document)?;
        std::fs::write(dir.join(format!("bench-{stamp}.json")), &text)?;
        std::fs::write(dir.join("latest.json"), &text)?;
        eprintln!("wrote target/bench/latest.json and target/bench/bench-{stamp}.json");
        Ok(())
    }
}

pub fn line(
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

/// The middle value (the lower of the two middle ones for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get((sorted.len().saturating_sub(1)) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// The nearest-rank quantile `q` (0 < q ≤ 1) of values sorted ascending; `None` when there
/// are none.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
