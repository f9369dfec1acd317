//! The loop of the deliverers' periodic upkeep (trimming the ops dead-letter queue,
//! trimming tenants to their own retention): a check every period until shutdown, a
//! failed check logged and tried again at the next period.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub async fn every<F, Fut, E>(period: Duration, shutdown: CancellationToken, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        let checked = tokio::select! {
            () = shutdown.cancelled() => return,
            checked = check() => checked,
        };
        if let Err(error) = checked {
            tracing::warn!(
                error = format!("{error:#}"),
                "{what} failed; trying again later"
            );
        }
    }
}
