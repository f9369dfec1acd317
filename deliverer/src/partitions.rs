//! The delivery queues this replica consumes — every partition, and retired queues
//! while any exist — and the gauge of how many messages wait in each.

use crate::metrics::DelivererMetrics;
use hookline_shared::broker::topology::Topology;
use hookline_shared::retry;
use hookline_shared::settings::AmqpSettings;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the ready-message gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// The label of a delivery queue in the partition metrics: its partition index, or
/// `legacy` for the single queue of an installation from before partitions.
pub fn label(topology: &Topology, queue: &str) -> String {
    let base = topology.partition_queue(0);
    let base = base.strip_suffix(".0").unwrap_or(&base);
    match queue.strip_prefix(base) {
        Some("") => "legacy".to_owned(),
        Some(index) => index.trim_start_matches('.').to_owned(),
        None => queue.to_owned(),
    }
}

/// The retired delivery queues (see [`Topology::retired_queues`]), found once the broker
/// is reachable; `None` if shut down first.
pub async fn find_retired(
    settings: &AmqpSettings,
    topology: &Topology,
    shutdown: &CancellationToken,
) -> Option<Vec<String>> {
    let attempt = || async {
        let connection = hookline_shared::broker::connect(settings, "deliverer-topology").await?;
        let channel = connection.create_channel().await?;
        topology.declare(&channel).await?;
        let retired = topology.retired_queues(&connection).await;
        let _ = connection.close(200, "done".into()).await;
        Ok::<_, anyhow::Error>(retired?)
    };
    let found = tokio::select! {
        () = shutdown.cancelled() => return None,
        found = retry::until_ok("finding retired delivery queues", retry::RECONNECT, shutdown, attempt) => found.ok()?,
    };
    if !found.is_empty() {
        tracing::info!(queues = ?found, "draining retired delivery queues");
    }
    Some(found)
}

/// Refreshes `hookline_partition_ready_messages` for `queues` until shut down.
pub async fn gauge_ready(
    settings: AmqpSettings,
    topology: Topology,
    queues: Vec<String>,
    metrics: DelivererMetrics,
    shutdown: CancellationToken,
) {
    let mut connection = None;
    loop {
        if connection.is_none() {
            connection = hookline_shared::broker::connect(&settings, "deliverer-gauges")
                .await
                .ok();
        }
        if let Some(open) = &connection
            && let Err(error) = refresh(open, &topology, &queues, &metrics).await
        {
            tracing::debug!(%error, "reading delivery queue depths failed");
            connection = None;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(GAUGE_INTERVAL) => {}
        }
    }
    if let Some(connection) = connection {
        let _ = connection.close(200, "shutdown".into()).await;
    }
}

async fn refresh(
    connection: &lapin::Connection,
    topology: &Topology,
    queues: &[String],
    metrics: &DelivererMetrics,
) -> Result<(), lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut channel = connection.create_channel().await?;
    for queue in queues {
        match channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(declared) => metrics
                .partition_ready
                .with_label_values(&[&label(topology, queue)])
                .set(i64::from(declared.message_count())),
            // A retired queue an operator deleted: the broker closed the channel.
            Err(_) if !topology.exists(connection, queue).await? => {
                let _ = metrics
                    .partition_ready
                    .remove_label_values(&[&label(topology, queue)]);
                channel = connection.create_channel().await?;
            }
            Err(error) => return Err(error),
        }
    }
    let _ = channel.close(200, "done".into()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::label;
    use hookline_shared::broker::topology::Topology;
    use hookline_shared::settings::QueueType;

    #[test]
    fn partitions_are_labelled_by_index_and_the_old_queue_as_legacy() {
        let topology = Topology::new("hl", QueueType::Quorum, 4);
        assert_eq!(label(&topology, "hl.deliveries.0"), "0");
        assert_eq!(label(&topology, "hl.deliveries.11"), "11");
        assert_eq!(label(&topology, "hl.deliveries"), "legacy");
    }
}
