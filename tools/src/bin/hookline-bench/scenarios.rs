//! The scenarios: what each runs and the lines it reports. Ratios are to the ceiling of
//! the same run unless they name another scenario.

use crate::Bench;
use crate::harness::{self, CEILING_IN_FLIGHT, Ceiling, Formats, Second, Throughput, Traffic};
use crate::paired::{self, Order, Side};
use crate::report::{Report, line, median, mib, quantile};
use hookline_shared::domain::event::Priority;

/// (1) and (2), interleaved: the raw broker ceiling — publish with confirms and consume
/// with manual acks — and throughput to one endpoint over HTTP, each run of (2) divided
/// by the mean of the ceilings either side of it.
pub async fn ceiling_and_single(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    let (with_ceiling, with_single) = (args.wants("ceiling"), args.wants("single"));
    let rounds = if with_single { args.repeat } else { 0 };
    let mut ceilings: Vec<Ceiling> = Vec::new();
    let mut singles: Vec<Throughput> = Vec::new();
    for step in paired::schedule(Order::Bracketed, rounds) {
        match step.side {
            Side::Reference if with_ceiling => {
                if ceilings.is_empty() {
                    eprintln!(
                        "[1/8] ceiling: raw RabbitMQ publish+consume, {} × 1 KiB",
                        args.ceiling_messages
                    );
                } else {
                    eprintln!("[1/8] ceiling again");
                }
                ceilings.push(harness::ceiling(&bench.brokers, args, CEILING_IN_FLIGHT).await?);
            }
            Side::Measured => {
                eprintln!(
                    "[2/8] throughput to 1 endpoint: {} events over HTTP (run {} of {})",
                    args.events,
                    step.round + 1,
                    args.repeat
                );
                singles.push(harness::throughput(&bench.brokers, args, single(args.events)).await?);
            }
            Side::Reference => {}
        }
    }

    if let Some(first) = ceilings.first() {
        let rates: Vec<f64> = ceilings.iter().map(|ceiling| ceiling.rate).collect();
        report.push(line(
            "ceiling",
            median(&rates),
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
        for (process, us) in &first.cpu_per_message {
            report.push(line(
                &format!("ceiling_cpu_per_message_{process}"),
                *us,
                "µs",
                None,
                Some("during the first ceiling run"),
            ));
        }
    }

    let rates = |runs: &[Throughput]| runs.iter().map(|r| r.events_per_s).collect::<Vec<_>>();
    let ceiling_rates: Vec<f64> = ceilings.iter().map(|ceiling| ceiling.rate).collect();
    let ratios = paired::ratios(Order::Bracketed, &rates(&singles), &ceiling_rates);
    // The run whose ratio is the median stands for (2): its figures are reported.
    let Some(single) =
        paired::representative(&ratios, singles.len()).and_then(|index| singles.get(index))
    else {
        return Ok(());
    };
    let mut throughput = line(
        "throughput_1_endpoint",
        single.events_per_s,
        "events/s",
        report.against("ceiling"),
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
            rates(&singles)
        )),
    ));
    report.cpu("cpu_per_event", single, "during throughput_1_endpoint");
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
    Ok(())
}

/// Not a denominator, an explanation: ingest answers each request after its confirm, so
/// it can never have more confirms outstanding than there are clients, and RabbitMQ
/// spends more per message when they come in smaller batches. This is the broker alone
/// at that depth. Only with both the ceiling and (2) to compare.
pub async fn ceiling_at_client_depth(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    let (Some(ceiling), Some(single)) = (
        report.against("ceiling"),
        report.value("throughput_1_endpoint"),
    ) else {
        return Ok(());
    };
    eprintln!("[1/8] ceiling with {} confirms outstanding", args.clients);
    let shallow = harness::ceiling(&bench.brokers, args, args.clients).await?;
    report.push(line(
        "ceiling_at_client_depth",
        shallow.rate,
        "msgs/s",
        Some(ceiling),
        Some("the ceiling with as many confirms outstanding as the load generator has clients"),
    ));
    if let Some((_, us)) = shallow
        .cpu_per_message
        .iter()
        .find(|(process, _)| *process == "rabbitmq")
    {
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
        Some((shallow.rate, "ceiling_at_client_depth")),
        None,
    ));
    Ok(())
}

/// (2b) (2) with the same events sent in batches (`POST …/events/batch`), as a ratio to
/// (2): what answering once per batch instead of once per event saves.
pub async fn batch(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!(
        "[2b/8] throughput to 1 endpoint in batches: {} events over HTTP, {} a batch, {} clients",
        args.events, args.batch_size, args.batch_clients
    );
    let batched = harness::throughput(
        &bench.brokers,
        args,
        Traffic::Batch {
            events: args.events,
            size: args.batch_size,
            clients: args.batch_clients,
        },
    )
    .await?;
    report.push(line(
        "throughput_batch_1_endpoint",
        batched.events_per_s,
        "events/s",
        report.against("throughput_1_endpoint"),
        Some(&format!(
            "batches of {} from {} clients",
            args.batch_size, args.batch_clients
        )),
    ));
    report.cpu(
        "batch_cpu_per_event",
        &batched,
        "during throughput_batch_1_endpoint",
    );
    Ok(())
}

/// (2c) (2) to one ordered endpoint, the events spread over 100 ordering keys and then
/// all under one key, as ratios to (2): what one-at-a-time per key costs. Issue 18's
/// target: with 100 keys, at least 0.5 of (2).
pub async fn ordered(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    for keys in [100, 1] {
        // One key is one delivery at a time: a tenth of the events is plenty to measure.
        let events = if keys == 1 {
            args.events / 10
        } else {
            args.events
        };
        eprintln!(
            "[2c/8] throughput to 1 ordered endpoint: {events} events over {keys} ordering keys"
        );
        let ordered =
            harness::throughput(&bench.brokers, args, Traffic::Ordered { events, keys }).await?;
        let name = format!("throughput_ordered_{keys}_keys");
        report.push(line(
            &name,
            ordered.events_per_s,
            "events/s",
            report.against("throughput_1_endpoint"),
            Some(&format!(
                "{events} events, each key's one at a time in acceptance order{}",
                if keys == 100 {
                    "; target ≥ 0.5 of throughput_1_endpoint"
                } else {
                    ""
                }
            )),
        ));
        report.cpu(
            &format!("ordered_{keys}_keys_cpu_per_event"),
            &ordered,
            &format!("during {name}"),
        );
    }
    Ok(())
}

/// (3) Deliveries/s with ten endpoints of one tenant.
pub async fn fanout(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!(
        "[3/8] fan-out to 10 endpoints: {} events over HTTP",
        args.fanout_events
    );
    let fanout = harness::throughput(&bench.brokers, args, fanout_in(bench, Formats::Json)).await?;
    report.push(line(
        "fanout_10_deliveries",
        fanout.deliveries_per_s,
        "deliveries/s",
        report.against("ceiling"),
        None,
    ));
    report.push(line(
        "fanout_10_events",
        fanout.events_per_s,
        "events/s",
        report.against("ceiling"),
        None,
    ));
    report.cpu(
        "fanout_cpu_per_event",
        &fanout,
        "CPU per event (10 deliveries, 1 rendering)",
    );
    Ok(())
}

/// (3b) The fan-out with the ten endpoints in eight formats (six presets, two
/// templates), as a ratio to the plain fan-out: the cost of rendering.
pub async fn mixed_formats(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!(
        "[3b/8] fan-out to 10 endpoints in 8 formats (6 presets, 2 templates): {} events",
        args.fanout_events
    );
    let mixed = harness::throughput(&bench.brokers, args, fanout_in(bench, Formats::Mixed)).await?;
    report.push(line(
        "fanout_10_mixed_formats_deliveries",
        mixed.deliveries_per_s,
        "deliveries/s",
        report.against("fanout_10_deliveries"),
        None,
    ));
    report.cpu(
        "fanout_mixed_cpu_per_event",
        &mixed,
        "CPU per event (10 deliveries, 8 renderings)",
    );
    Ok(())
}

/// (4) (2) with events published straight to the exchange.
pub async fn direct_amqp(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!(
        "[4/8] direct AMQP ingest: {} events published to the exchange",
        args.events
    );
    let direct = harness::throughput(
        &bench.brokers,
        args,
        Traffic::Amqp {
            events: args.events,
        },
    )
    .await?;
    report.push(line(
        "direct_amqp_1_endpoint",
        direct.events_per_s,
        "events/s",
        report.against("ceiling"),
        None,
    ));
    report.cpu(
        "direct_cpu_per_event",
        &direct,
        "during direct_amqp_1_endpoint",
    );
    Ok(())
}

/// (5) Send to receipt at a fixed rate, same clock: p50, p99, p99.9.
pub async fn latency(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!(
        "[5/8] latency at {} events/s for {:?}",
        args.latency_rate, args.latency_duration
    );
    let latency = harness::latency(&bench.brokers, args).await?;
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
    Ok(())
}

/// (6) (2) while another tenant, sending one event in 20 on top of the measured ones,
/// has an endpoint that hangs until the timeout. Each hanging run is paired with a run of
/// (2); one control of the same traffic with the second endpoint answering separates the
/// hanging endpoint's effect from the extra events of its tenant.
pub async fn isolation(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!("[6/8] isolation: throughput to 1 endpoint while another tenant's endpoint hangs");
    let run = |second| harness::throughput(&bench.brokers, args, beside(args.events, second));
    let mut isolated_runs = Vec::new();
    let mut beside_runs = Vec::new();
    let mut control_runs = Vec::new();
    for step in paired::schedule(Order::Alternating, args.isolation_pairs.max(1)) {
        match step.side {
            Side::Measured => isolated_runs.push(run(Second::Hanging).await?),
            Side::Reference => beside_runs.push(run(Second::None).await?),
        }
        if step.round == 0 && step.closes_round {
            control_runs.push(run(Second::Answering).await?);
        }
    }
    let rates = |runs: &[Throughput]| runs.iter().map(|r| r.events_per_s).collect::<Vec<_>>();
    let (Some(isolated), Some(control)) = (median_run(&isolated_runs), median_run(&control_runs))
    else {
        return Ok(());
    };
    // Each hanging run over the run of (2) beside it, as (2) is over its ceilings.
    let pair_ratios = paired::ratios(
        Order::Alternating,
        &rates(&isolated_runs),
        &rates(&beside_runs),
    );
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
    if let Some(single) = report.against("throughput_1_endpoint") {
        report.push(line(
            "isolation_vs_first_throughput_1_endpoint",
            isolated.events_per_s,
            "events/s",
            Some(single),
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
    report.cpu(
        "isolation_cpu_per_event",
        isolated,
        "CPU per healthy event, the hanging tenant's work included",
    );
    report.cpu(
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
    Ok(())
}

/// (8) What a dead receiver's backlog costs while it waits: events held behind an open
/// circuit, then the CPU of deliverer, Redis and RabbitMQ and the deliveries held again
/// per second over a window in which nothing else happens.
pub async fn held_backlog(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!(
        "[7/8] held backlog: {} events for an endpoint that refuses connections, then {:?} idle",
        args.held_events, args.held_window
    );
    let held = harness::held_backlog(&bench.brokers, args).await?;
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
    Ok(())
}

/// (9) The noisy neighbour: one tenant's backlog, queued while no deliverer ran, drains
/// while a quiet tenant sends at a fixed rate. How long the quiet events take, whether
/// they wait behind the backlog, and how fast the backlog drains, as a ratio to (2) when
/// it ran. Issue 17's targets, for the change that makes delivery fair: quiet p95 under
/// 100 ms and max under 500 ms, drain at least 0.9 of (2).
pub async fn noisy_neighbour(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    backlog_beside_quiet(bench, report, Priority::Realtime).await
}

/// (10) The same with the backlog marked bulk: it drains through bulk lanes with the
/// capacity the quiet tenant's real-time events leave.
pub async fn bulk_lane(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    backlog_beside_quiet(bench, report, Priority::Bulk).await
}

async fn backlog_beside_quiet(
    bench: &Bench,
    report: &mut Report,
    priority: Priority,
) -> anyhow::Result<()> {
    let args = &bench.args;
    let (step, prefix) = match priority {
        Priority::Realtime => ("[7b/8] noisy neighbour", "noisy"),
        Priority::Bulk => ("[7c/8] bulk lane", "bulk"),
    };
    eprintln!(
        "{step}: {} {} events of one tenant queued with no deliverer, then drained while another sends {}/s",
        args.noisy_backlog,
        priority.as_str(),
        args.noisy_quiet_rate
    );
    let noisy = harness::noisy_neighbour(&bench.brokers, args, priority).await?;
    let quiet = &noisy.drain.quiet;
    let name = |suffix: &str| format!("{prefix}_{suffix}");
    report.push(line(
        &name("neighbour_runs"),
        1.0,
        "runs",
        None,
        Some(&format!(
            "{} of the quiet tenant's {} events were sent while the backlog of {} drained ({:.2} s); targets: quiet p95 < 100 ms, max < 500 ms, drain ≥ 0.9 of throughput_1_endpoint",
            quiet.len(),
            noisy.quiet_sent,
            args.noisy_backlog,
            noisy.drain.seconds
        )),
    ));
    let mut latencies: Vec<f64> = quiet
        .iter()
        .map(|event| event.latency_us as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let latency_note = format!(
        "quiet tenant at {}/s, send to receipt, while another tenant's backlog drains",
        args.noisy_quiet_rate
    );
    for (suffix, q) in [
        ("quiet_latency_p50", 0.5),
        ("quiet_latency_p95", 0.95),
        ("quiet_latency_max", 1.0),
    ] {
        if let Some(value) = quantile(&latencies, q) {
            report.push(line(&name(suffix), value, "ms", None, Some(&latency_note)));
        }
    }
    report.push(line(
        &name("quiet_events"),
        quiet.len() as f64,
        "events",
        None,
        Some("the quiet events sent while the backlog drained: the ones the latencies are of"),
    ));
    let before: Vec<f64> = quiet
        .iter()
        .map(|event| event.backlog_before as f64)
        .collect();
    if !before.is_empty() {
        report.push(line(
            &name("backlog_before_quiet"),
            median(&before),
            "events",
            None,
            Some(&format!(
                "median over the quiet events of the backlog's events (of {}) received when each arrived: near the backlog's size, quiet events wait behind it",
                args.noisy_backlog
            )),
        ));
    }
    report.push(line(
        &name("drain_rate"),
        noisy.drain.events_per_s,
        "events/s",
        report.against("throughput_1_endpoint"),
        Some("the backlog's events from the deliverer ready to the last of them; ingest carries only the quiet tenant meanwhile, unlike in (2)"),
    ));
    Ok(())
}

/// The run with the median rate (the lower middle one for an even count).
fn median_run(runs: &[Throughput]) -> Option<&Throughput> {
    let rates: Vec<f64> = runs.iter().map(|run| run.events_per_s).collect();
    paired::median_rate(&rates).and_then(|index| runs.get(index))
}

/// Events over HTTP to one endpoint of one tenant: (2).
fn single(events: usize) -> Traffic {
    beside(events, Second::None)
}

/// (2) with a `second` tenant beside the measured one.
fn beside(events: usize, second: Second) -> Traffic {
    Traffic::Http {
        endpoints: 1,
        events,
        second,
        formats: Formats::Json,
    }
}

fn fanout_in(bench: &Bench, formats: Formats) -> Traffic {
    Traffic::Http {
        endpoints: 10,
        events: bench.args.fanout_events,
        second: Second::None,
        formats,
    }
}
