//! Emits operational events (`hookline.endpoint.failing`, …) into the pipeline: published
//! to the partitions exchange with a confirm, like an event ingest accepted, for the
//! endpoint's tenant and, when one is configured, the operator tenant. Off the delivery
//! path: a notice is published by its own task, retried through broker outages until
//! shutdown.

use hookline_shared::broker::publisher::Publisher;
use hookline_shared::contract::{JSON, SOURCE_HEADER, TENANT_HEADER};
use hookline_shared::domain::endpoint::Endpoint;
use hookline_shared::domain::event::{Event, EventMessage, Fallbacks, TenantId};
use hookline_shared::domain::notification::Notice;
use hookline_shared::retry;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `x-hookline-source` of operational events: the deliverer accepts reserved types only
/// with it.
pub const SOURCE_NOTICE: &str = "notice";

#[derive(Debug, Clone)]
pub struct Notifier {
    pub publisher: Publisher,
    pub exchange: String,
    pub operator_tenant: Option<TenantId>,
    pub tasks: TaskTracker,
    pub abort: CancellationToken,
}

impl Notifier {
    /// Publishes `notice` about `endpoint` for its tenant and the operator tenant.
    pub fn emit(&self, endpoint: &Endpoint, notice: &Notice) {
        let mut tenants = vec![endpoint.tenant.clone()];
        if let Some(operator) = &self.operator_tenant
            && *operator != endpoint.tenant
        {
            tenants.push(operator.clone());
        }
        let data = notice.data(endpoint);
        for tenant in tenants {
            let message = EventMessage {
                event_type: notice.event_type().to_owned(),
                data: data.clone(),
                ..EventMessage::default()
            };
            let Ok(event) = Event::from_message(
                message,
                Fallbacks {
                    tenant: Some(tenant),
                    id: format!("ntc_{}", uuid::Uuid::now_v7().simple()),
                    occurred_at: OffsetDateTime::now_utc(),
                },
            ) else {
                continue;
            };
            let notifier = self.clone();
            self.tasks
                .spawn(async move { notifier.publish(event).await });
        }
    }

    async fn publish(self, event: Event) {
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let mut headers = FieldTable::default();
        headers.insert(
            SOURCE_HEADER.into(),
            AMQPValue::LongString(SOURCE_NOTICE.into()),
        );
        headers.insert(
            TENANT_HEADER.into(),
            AMQPValue::LongString(event.tenant.as_str().into()),
        );
        let properties = BasicProperties::default()
            .with_content_type(JSON.into())
            .with_message_id(event.id.as_str().into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let published = retry::until_ok(
            "publishing an operational event",
            retry::HOLD,
            &self.abort,
            || {
                self.publisher.publish(
                    &self.exchange,
                    event.event_type.as_str(),
                    &body,
                    properties.clone(),
                )
            },
        )
        .await;
        match published {
            Ok(()) => {
                tracing::info!(event.id = %event.id, event.r#type = %event.event_type.as_str(), tenant = %event.tenant, "operational event published")
            }
            Err(retry::Cancelled) => {
                tracing::warn!(event.id = %event.id, "operational event not published before shutdown")
            }
        }
    }
}
