//! The service registry: one JSON entry per service instance in KV bucket `registry`
//! (key `<service>.<instance-id>`), kept alive by heartbeats with a per-key TTL.
//!
//! - [`entry`]: what an entry holds.
//! - [`registrar`]: how an instance registers, heartbeats and deregisters (the SDK
//!   uses it).
//! - [`view`]: discovery, a watch-fed in-memory view (the gateway uses it).
//! - [`RegistryComponent`]: answers `sys.registry.list` and `sys.registry.get.<service>`
//!   and publishes `events.sys.service.expired` when an entry's TTL runs out.

pub mod entry;
pub mod registrar;
pub mod view;

use std::hash::{DefaultHasher, Hash, Hasher};

use async_nats::jetstream::kv::Operation;
use futures::future::BoxFuture;
use tokio::sync::broadcast::error::RecvError;

use self::view::{Change, RegistryView};
use crate::component::responder::{self, Endpoint, Reply, Request};
use crate::component::{Component, Context, Subscription};
use crate::envelope::Meta;
use crate::error::Error;
use crate::integration::bus::{self, catalog::Lifecycle, catalog::ServiceLifecycle};
use crate::subjects::{QUEUE_GROUP, SYS_REGISTRY_GET, SYS_REGISTRY_LIST};

pub use self::entry::{EndpointEntry, Health, RegistryEntry};
pub use self::registrar::Registrar;
pub use self::view::Lookup;

pub const NAME: &str = "registry";
const SOURCE: &str = "urn:switchyard:registry";

pub struct RegistryComponent;

impl Component for RegistryComponent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn subscriptions(&self) -> Vec<Subscription> {
        vec![
            Subscription {
                subject: SYS_REGISTRY_LIST,
                queue_group: Some(QUEUE_GROUP),
                description: "every registered instance",
            },
            Subscription {
                subject: SYS_REGISTRY_GET,
                queue_group: Some(QUEUE_GROUP),
                description: "the instances of one service (404 if unknown)",
            },
        ]
    }

    fn start(&self, ctx: Context) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let view = RegistryView::start(&ctx.client, ctx.shutdown().clone()).await?;
            let list_view = view.clone();
            let list = Endpoint {
                name: "list",
                subject: SYS_REGISTRY_LIST.into(),
                queue_group: Some(QUEUE_GROUP),
                request_type: "io.switchyard.sys.registry.list",
                source: SOURCE,
            };
            responder::serve(&ctx, NAME, list, move |request: Request| {
                let reply = Reply::to(&request, &list_view.all());
                async move { Ok(reply) }
            })
            .await?;
            let get_view = view.clone();
            let get = Endpoint {
                name: "get",
                subject: "sys.registry.get.*".into(),
                queue_group: Some(QUEUE_GROUP),
                request_type: "io.switchyard.sys.registry.get",
                source: SOURCE,
            };
            responder::serve(&ctx, NAME, get, move |request: Request| {
                let service = request.subject.rsplit('.').next().unwrap_or_default();
                let instances = get_view.instances(service);
                let reply = if instances.is_empty() {
                    Err(Error::not_found(format!(
                        "service {service:?} is not registered"
                    )))
                } else {
                    Ok(Reply::to(&request, &instances))
                };
                async move { reply }
            })
            .await?;
            ctx.spawn(report_expiries(ctx.clone(), view));
            Ok(())
        })
    }
}

/// Publishes `events.sys.service.expired` for every entry whose TTL ran out. Every
/// registry instance sees the same expiry; the event's id is derived from the key and
/// revision, so the stream keeps one copy however many instances publish it.
async fn report_expiries(ctx: Context, view: RegistryView) {
    let mut changes = view.changes();
    loop {
        let change = tokio::select! {
            _ = ctx.shutdown().cancelled() => return,
            change = changes.recv() => change,
        };
        let change = match change {
            Ok(change) => change,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "registry changes missed");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if change.operation != Operation::Purge {
            continue;
        }
        let event = ServiceLifecycle {
            change: Lifecycle::Expired,
            version: change
                .entry
                .as_ref()
                .map(|e| e.version.clone())
                .unwrap_or_default(),
            service: change.service.clone(),
            instance: change.instance.clone(),
        };
        let mut meta = Meta::new(SOURCE, "io.switchyard.sys.service.expired");
        meta.id = deterministic_id(&change);
        meta.correlation_id = meta.id.clone();
        if let Err(err) = bus::publish_with_meta(&ctx.jetstream, &ctx.client, meta, &event).await {
            tracing::warn!(%err, service = %change.service, "cannot publish expiry");
        }
    }
}

/// A UUID v7 whose time is the change's and whose "random" bits hash key and revision.
fn deterministic_id(change: &Change) -> String {
    let mut bytes = [0u8; 10];
    for (i, chunk) in bytes.chunks_mut(5).enumerate() {
        let mut hasher = DefaultHasher::new();
        (i, &change.service, &change.instance, change.revision).hash(&mut hasher);
        chunk.copy_from_slice(&hasher.finish().to_be_bytes()[..5]);
    }
    let millis = u64::try_from(change.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes)
        .into_uuid()
        .to_string()
}
