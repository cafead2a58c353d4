//! The log manager: every log event that passes the filter is also published to
//! `logs.<level>.<component>` (stream `LOGS`), as a JSON envelope.
//!
//! Publishing never blocks and never slows the code that logs: [`NatsLayer`] only puts
//! the record in a bounded queue; one task per process publishes at most [`RATE`]
//! records a second (bursts of [`BURST`]). What does not fit is counted in
//! `switchyard_logs_dropped_total`, and stderr still has it. Events of the NATS client
//! library itself stay on stderr: publishing them would feed on itself.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use super::logging::component_of;
use crate::envelope::{ContentType, Envelope, Meta, Outgoing};
use crate::observability::metrics as m;

/// Records a second the publisher sends, on average.
pub const RATE: u32 = 500;
/// Records it may send at once after a quiet spell.
pub const BURST: u32 = 2000;
const QUEUE: usize = 8192;

/// One log record as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// RFC 3339 with sub-second precision.
    pub time: String,
    /// `error`, `warn`, `info`, `debug`, `trace`.
    pub level: String,
    pub component: String,
    /// The module that logged.
    pub target: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// The process (instance id) that logged, once it has one.
    #[serde(default)]
    pub instance: String,
}

static QUEUE_TX: OnceLock<mpsc::Sender<LogRecord>> = OnceLock::new();

/// The tracing layer feeding the queue; installed by [`super::logging::init`].
pub struct NatsLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for NatsLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let Some(queue) = QUEUE_TX.get() else { return };
        let meta = event.metadata();
        if meta.target().starts_with("async_nats") {
            return;
        }
        let mut visitor = Fields::default();
        event.record(&mut visitor);
        let record = LogRecord {
            time: crate::envelope::now_rfc3339(),
            level: meta.level().as_str().to_ascii_lowercase(),
            component: component_of(meta.target()).to_string(),
            target: meta.target().to_string(),
            message: visitor.message,
            fields: visitor.fields,
            instance: String::new(),
        };
        if queue.try_send(record).is_err() {
            m::log_dropped();
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .insert(field.name().to_string(), value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .insert(field.name().to_string(), format!("{value:?}"));
        }
    }
}

/// Starts publishing this process's logs on `client` as `instance`. The first call wins
/// (one publisher per process); logs before it stay on stderr only.
pub fn attach(client: &Client, instance: &str) {
    let (tx, rx) = mpsc::channel(QUEUE);
    if QUEUE_TX.set(tx).is_err() {
        return;
    }
    tokio::spawn(publish(client.clone(), instance.to_string(), rx));
}

async fn publish(client: Client, instance: String, mut rx: mpsc::Receiver<LogRecord>) {
    let mut tokens = f64::from(BURST);
    let mut last = Instant::now();
    while let Some(mut record) = rx.recv().await {
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * f64::from(RATE))
            .min(f64::from(BURST));
        last = now;
        if tokens < 1.0 {
            m::log_dropped();
            continue;
        }
        tokens -= 1.0;
        record.instance.clone_from(&instance);
        let subject = format!("logs.{}.{}", record.level, record.component);
        let meta = Meta::new(
            format!("urn:switchyard:{}", record.component),
            format!("io.switchyard.log.{}", record.level),
        )
        .with_content_type(ContentType::Json);
        let level = record.level.clone();
        let Ok(message) = Outgoing::encode(&Envelope::new(meta, record)) else {
            continue;
        };
        if crate::envelope::check_size(&client, &message).is_err() {
            m::log_dropped();
            continue;
        }
        if client
            .publish_with_headers(subject, message.headers, message.payload)
            .await
            .is_ok()
        {
            m::log_published(&level);
        }
    }
}

/// How long `switchyard log-level` collects answers from instances.
pub const GATHER: Duration = Duration::from_secs(1);
