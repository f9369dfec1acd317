//! The cluster proof: three RabbitMQ nodes, each in a network namespace of its own
//! (`scripts/cluster.sh`), two ingest and three deliverers, events from HTTP and AMQP
//! over several tenants while, one after another, the node leading most delivery queues
//! is SIGKILLed (and started again), a node is cut off from the other two (its link goes
//! down) and healed, the node one deliverer is connected to is cut off from that
//! deliverer only (the deliverer reaches the nodes over side links of their own, and the
//! one it uses goes down), a deliverer is stopped past its leases and continued, the
//! Redis master is SIGKILLed (Sentinel promotes the replica), and a disk alarm blocks
//! every publisher. Nothing accepted may be lost.
//!
//! `CLUSTER_EVENTS` (5,000 in `make test`, 20,000 in `make cluster-chaos`) and
//! `CLUSTER_CUT_SECONDS` / `CLUSTER_ALARM_SECONDS` (10 / 5; 30 / 20) set the size.

use super::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

async fn cluster(args: &[&str]) -> String {
    let output = Command::new(root().join("scripts/cluster.sh"))
        .args(args)
        .output()
        .await
        .expect("cluster.sh runs");
    assert!(
        output.status.success(),
        "cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// When each fault began and ended, to tell events sent during it from the others.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    started: Duration,
    ended: Duration,
}

/// A stretch of 503s (or no answer) one event met before it was accepted.
#[derive(Debug, Clone, Copy, Default)]
struct Refusal {
    lasted: Duration,
    /// From the start of the run.
    from: Duration,
    api: u16,
}

fn note_refusal(refusals: &Mutex<Vec<Refusal>>, since: Instant, started: Instant, api: u16) {
    refusals.lock().expect("lock").push(Refusal {
        lasted: since.elapsed(),
        from: since - started,
        api,
    });
}

fn p99(mut latencies: Vec<Duration>) -> String {
    if latencies.is_empty() {
        return "-".to_owned();
    }
    latencies.sort_unstable();
    let index = ((latencies.len() as f64) * 0.99).ceil() as usize;
    let value = latencies[index.clamp(1, latencies.len()) - 1];
    format!(
        "{:.0} ms (n={})",
        value.as_secs_f64() * 1000.0,
        latencies.len()
    )
}

#[tokio::test]
async fn cluster_chaos_loses_nothing() {
    let urls = env("HOOKLINE_TEST_CLUSTER_AMQP_URL");
    let events = setting("CLUSTER_EVENTS", 5000) as usize;
    let cut_for = Duration::from_secs(setting("CLUSTER_CUT_SECONDS", 10));
    let alarm_for = Duration::from_secs(setting("CLUSTER_ALARM_SECONDS", 5));
    let environment = vec![
        ("HOOKLINE__AMQP__URL", urls.clone()),
        (
            "HOOKLINE__REDIS__URL",
            env("HOOKLINE_TEST_CLUSTER_REDIS_URL"),
        ),
        ("HOOKLINE__DELIVERY__MAX_HOLD", "20s".to_owned()),
    ];
    let mut hookline = Installation::start_with(2, environment.clone()).await;
    // The third deliverer reaches the nodes over their side links only, so one node can
    // be cut off from it while the cluster and everyone else still reach that node.
    hookline.add_deliverer_with(&[(
        "HOOKLINE__AMQP__URL",
        env("HOOKLINE_TEST_CLUSTER_SIDE_AMQP_URL"),
    )]);
    hookline.wait_ready(&hookline.deliverers[2]).await;
    let second_api = free_port();
    let mut second_environment = environment;
    second_environment.push(("HOOKLINE__HTTP__LISTEN", format!("127.0.0.1:{second_api}")));
    let second_ingest = spawn(&hookline.prefix, "hookline-ingest", &second_environment);
    hookline.wait_ready(&second_ingest).await;

    let tenants = ["acme", "globex", "initech", "umbrella"];
    let mut receivers = Vec::new();
    for tenant in tenants {
        let receiver = Receiver::start().await;
        let endpoint = hookline.create_endpoint(tenant, receiver.url()).await;
        receivers.push((tenant, receiver, endpoint));
    }
    let started = Instant::now();
    let ids: Arc<Vec<(usize, String)>> = Arc::new(
        (0..events)
            .map(|n| (n % tenants.len(), format!("cluster-{n}")))
            .collect(),
    );
    let sent = Arc::new(AtomicUsize::new(0));
    // When each event was accepted.
    let accepted_at: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
    // Every stretch in which one event was refused.
    let refusals: Arc<Mutex<Vec<Refusal>>> = Arc::default();
    let senders: Vec<_> = (0..16)
        .map(|sender| {
            let (ids, sent, accepted_at, refusals) = (
                ids.clone(),
                sent.clone(),
                accepted_at.clone(),
                refusals.clone(),
            );
            let (http, prefix, urls) =
                (hookline.http.clone(), hookline.prefix.clone(), urls.clone());
            let api = if sender % 2 == 0 {
                hookline.api
            } else {
                second_api
            };
            tokio::spawn(async move {
                loop {
                    let index = sent.fetch_add(1, Ordering::Relaxed);
                    let Some((tenant, id)) = ids.get(index) else {
                        return;
                    };
                    let tenant = ["acme", "globex", "initech", "umbrella"][*tenant];
                    let mut refused_since = None;
                    loop {
                        // One in four straight to the exchange, as an ATS would.
                        let answer = if index % 4 == 3 {
                            publish_direct_via(&urls, &prefix, tenant, id)
                                .await
                                .then_some(202)
                        } else {
                            post_status(&http, api, tenant, id).await
                        };
                        match answer {
                            Some(202) => break,
                            // 503, or no answer: what the window measures. A 409 (the
                            // id's claim from a try the broker or Redis failed is still
                            // held, up to a minute) is the ATS's retry waiting, not a
                            // refusal of service.
                            Some(503) | None if index % 4 != 3 => {
                                refused_since.get_or_insert_with(Instant::now);
                            }
                            _ => {
                                if let Some(since) = refused_since.take() {
                                    note_refusal(&refusals, since, started, api);
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(since) = refused_since {
                        note_refusal(&refusals, since, started, api);
                    }
                    accepted_at
                        .lock()
                        .expect("lock")
                        .insert(id.clone(), started.elapsed());
                }
            })
        })
        .collect();

    let progress = || sent.load(Ordering::Relaxed);
    let at = |fraction: f64| (events as f64 * fraction) as usize;
    let reach = |fraction: f64| {
        eventually_within(
            "the load reaches the next fault",
            CHAOS_PATIENCE,
            move || {
                let reached = progress() >= at(fraction);
                async move { reached }
            },
        )
    };
    let mut phases = Vec::new();

    reach(0.15).await;
    let leader: u32 = cluster(&["leader", &hookline.prefix])
        .await
        .parse()
        .expect("a node number");
    let begin = started.elapsed();
    cluster(&["kill", &leader.to_string()]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster(&["start", &leader.to_string()]).await;
    phases.push(Phase {
        name: "leader node killed and restarted",
        started: begin,
        ended: started.elapsed(),
    });

    reach(0.35).await;
    let cut = if leader == 3 { 2 } else { 3 };
    let begin = started.elapsed();
    cluster(&["cut", &cut.to_string()]).await;
    tokio::time::sleep(cut_for).await;
    cluster(&["heal", &cut.to_string()]).await;
    phases.push(Phase {
        name: "a node cut off from the others",
        started: begin,
        ended: started.elapsed(),
    });

    reach(0.45).await;
    let begin = started.elapsed();
    let side_nodes = || async {
        cluster(&["side-nodes"])
            .await
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let Some(cut_off) = side_nodes().await.first().cloned() else {
        panic!("the side-link deliverer has no connection to any node");
    };
    let consuming = || {
        metric(
            &hookline.http,
            hookline.deliverers[2].admin,
            "hookline_consumer_connected",
        )
    };
    let consumers = consuming().await;
    cluster(&["side-cut", &cut_off]).await;
    // Until the cut-off node has dropped the deliverer's connections (its heartbeat timed
    // out) and the deliverer consumes every queue it did, each consumer on a connection
    // of its own through the other nodes.
    eventually_within(
        "the deliverer cut off from its node moves to another",
        CHAOS_PATIENCE,
        || async {
            let now = side_nodes().await;
            now.len() as f64 >= consumers
                && now.iter().all(|node| *node != cut_off)
                && consuming().await >= consumers
        },
    )
    .await;
    cluster(&["side-heal", &cut_off]).await;
    phases.push(Phase {
        name: "a node cut off from one deliverer",
        started: begin,
        ended: started.elapsed(),
    });

    reach(0.55).await;
    let begin = started.elapsed();
    let paused = &hookline.deliverers[0];
    signal(paused, "-STOP").await;
    // Past the retry lease (5 s here): its claimed work goes to the others.
    tokio::time::sleep(Duration::from_secs(8)).await;
    signal(paused, "-CONT").await;
    phases.push(Phase {
        name: "a deliverer stopped past its leases",
        started: begin,
        ended: started.elapsed(),
    });

    reach(0.65).await;
    let begin = started.elapsed();
    let old_master = cluster(&["redis-kill-master"]).await;
    eventually_within(
        "a sentinel promotes the replica",
        CHAOS_PATIENCE,
        || async { cluster(&["redis-master"]).await != old_master },
    )
    .await;
    phases.push(Phase {
        name: "Redis master killed, replica promoted",
        started: begin,
        ended: started.elapsed(),
    });

    reach(0.8).await;
    let begin = started.elapsed();
    cluster(&["disk-alarm", "on"]).await;
    tokio::time::sleep(alarm_for).await;
    cluster(&["disk-alarm", "off"]).await;
    phases.push(Phase {
        name: "disk alarm on every node",
        started: begin,
        ended: started.elapsed(),
    });

    for sender in senders {
        sender.await.expect("sender");
    }
    let sent_in = started.elapsed();

    // Every (event, endpoint) pair: delivered at least once, or dead-lettered.
    let dead: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let unsettled = |dead: &[(String, String, String)]| {
        let dead: HashSet<(&str, &str)> = dead
            .iter()
            .map(|(endpoint, id, _)| (endpoint.as_str(), id.as_str()))
            .collect();
        receivers
            .iter()
            .enumerate()
            .map(|(t, (_, receiver, endpoint))| {
                let delivered = delivered_ids(receiver);
                ids.iter()
                    .filter(|(tenant, id)| {
                        *tenant == t
                            && !delivered.contains(id)
                            && !dead.contains(&(endpoint.as_str(), id.as_str()))
                    })
                    .count()
            })
            .sum::<usize>()
    };
    eventually_within(
        "every pair is delivered or dead-lettered",
        CHAOS_PATIENCE,
        || async {
            let taken = take_dead_letters_via(&urls, &hookline.prefix).await;
            dead.lock().expect("lock").extend(taken);
            unsettled(&dead.lock().expect("lock")) == 0
        },
    )
    .await;
    let drained_in = started.elapsed();
    let dead = dead.lock().expect("lock").clone();
    let lost = unsettled(&dead);

    // Send → first receipt, and receipts beyond the first, by the phase the event was
    // accepted in.
    let accepted_at = accepted_at.lock().expect("lock").clone();
    let mut first_receipt: HashMap<String, (Instant, usize)> = HashMap::new();
    let mut receipts: usize = 0;
    for (_, receiver, _) in &receivers {
        for received in receiver.received() {
            receipts += 1;
            if let Some(id) = received.header("webhook-id") {
                let first = first_receipt
                    .entry(id.to_owned())
                    .or_insert((received.at, 0));
                first.0 = first.0.min(received.at);
                first.1 += 1;
            }
        }
    }
    let unique = first_receipt.len();
    // Stretches in time, in order: before the faults, then during and after each one.
    let stretch_of = |at: Duration| -> usize {
        let mut stretch = 0;
        for (index, phase) in phases.iter().enumerate() {
            if at >= phase.started && at <= phase.ended {
                return 2 * index + 1;
            }
            if at > phase.ended {
                stretch = 2 * index + 2;
            }
        }
        stretch
    };
    let stretch_name = |stretch: usize| match stretch {
        0 => "before the faults".to_owned(),
        odd if odd % 2 == 1 => format!("during: {}", phases[odd / 2].name),
        even => format!("after: {}", phases[even / 2 - 1].name),
    };
    #[derive(Default)]
    struct Stretch {
        latencies: Vec<Duration>,
        duplicates: usize,
        longest_refusal: Duration,
    }
    let mut stretches: Vec<Stretch> = (0..=2 * phases.len()).map(|_| Stretch::default()).collect();
    for (id, accepted) in &accepted_at {
        let Some((received, count)) = first_receipt.get(id) else {
            continue;
        };
        let stretch = &mut stretches[stretch_of(*accepted)];
        stretch
            .latencies
            .push(received.saturating_duration_since(started + *accepted));
        stretch.duplicates += count - 1;
    }
    let refusals = refusals.lock().expect("lock").clone();
    for refusal in &refusals {
        let stretch = &mut stretches[stretch_of(refusal.from)];
        stretch.longest_refusal = stretch.longest_refusal.max(refusal.lasted);
    }
    let longest_refusal = refusals
        .iter()
        .copied()
        .max_by_key(|refusal| refusal.lasted)
        .unwrap_or_default();
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    for (_, _, reason) in &dead {
        *reasons.entry(reason.as_str()).or_default() += 1;
    }
    println!(
        "cluster chaos: ingest APIs on ports {} and {second_api}",
        hookline.api
    );
    println!(
        "cluster chaos: {events} events over {} tenants (¾ HTTP to 2 ingest, ¼ AMQP), 3 deliverers (one over side links), 3 RabbitMQ nodes",
        tenants.len()
    );
    for phase in &phases {
        println!(
            "cluster chaos: {} from {:.1} s to {:.1} s",
            phase.name,
            phase.started.as_secs_f64(),
            phase.ended.as_secs_f64()
        );
    }
    println!(
        "cluster chaos: sent in {:.1} s, settled at {:.1} s\n\
         cluster chaos: lost = {lost} (must be 0)\n\
         cluster chaos: duplicate rate {:.2} % ({receipts} receipts for {unique} events)\n\
         cluster chaos: dead letters by reason {reasons:?}\n\
         cluster chaos: longest window in which ingest answered an event 503 (or not at all): {:.1} s, from {:.1} s, at the ingest on port {}",
        sent_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        100.0 * receipts.saturating_sub(unique) as f64 / unique.max(1) as f64,
        longest_refusal.lasted.as_secs_f64(),
        longest_refusal.from.as_secs_f64(),
        longest_refusal.api,
    );
    for (index, stretch) in stretches.into_iter().enumerate() {
        if stretch.latencies.is_empty() && stretch.longest_refusal.is_zero() {
            continue;
        }
        println!(
            "cluster chaos: {}: p99 send→receipt {}, {} duplicate receipts, longest 503 window begun then {:.1} s",
            stretch_name(index),
            p99(stretch.latencies),
            stretch.duplicates,
            stretch.longest_refusal.as_secs_f64(),
        );
    }
    assert_eq!(lost, 0);
    drop(second_ingest);
    hookline.stop().await;
}
