//! The error logger: every error a component reports becomes an envelope on
//! `errors.<component>` (kept in stream `ERRORS`), so `nats sub 'errors.>'` shows what
//! fails, where and in which trace.
//!
//! Reporting never blocks and never fails the caller: [`ErrorLog::report`] puts the
//! record in a bounded queue and one task per connection publishes it (core NATS; the
//! stream captures it). When errors come faster than they can be published (a flood
//! of bad requests) the excess is counted in `switchyard_error_log_dropped_total`
//! instead of slowing the path that failed.

use std::sync::Arc;

use async_nats::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::envelope::{ContentType, Envelope, Meta, Outgoing, TraceParent, check_size};
use crate::error::{Error, ErrorKind};
use crate::observability::metrics as m;
use crate::subjects;

/// Records waiting to be published; more are dropped and counted.
const QUEUE: usize = 4096;
/// `ce-type` of an error record: `io.switchyard.error.<kind>`.
pub const TYPE_PREFIX: &str = "io.switchyard.error.";

/// One error, as published on `errors.<component>` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    pub component: String,
    pub kind: ErrorKind,
    pub code: u16,
    pub message: String,
    /// What was being done: `api.echo.say`, `sync-orders`, `tasks.work.echo.say`…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The W3C trace the failing work belonged to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Where an error happened, all optional.
#[derive(Debug, Clone, Default)]
pub struct Where<'a> {
    pub subject: Option<&'a str>,
    pub service: Option<&'a str>,
    pub operation: Option<&'a str>,
    /// The failing message's `traceparent`, so the record joins its trace.
    pub traceparent: Option<&'a str>,
}

struct Queued {
    record: ErrorRecord,
    traceparent: Option<String>,
}

/// Cheap to clone; every clone feeds the same publisher.
#[derive(Clone)]
pub struct ErrorLog {
    queue: Option<Arc<mpsc::Sender<Queued>>>,
}

impl ErrorLog {
    /// Starts the publisher on `client`. It ends when the last clone is dropped.
    pub fn start(client: &Client) -> ErrorLog {
        let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(queued) = rx.recv().await {
                if let Err(err) = publish(&client, queued).await {
                    tracing::debug!(%err, "cannot publish an error record");
                }
            }
        });
        ErrorLog {
            queue: Some(Arc::new(tx)),
        }
    }

    /// Reports nothing (benchmarks of the bare paths, unit tests).
    pub fn disabled() -> ErrorLog {
        ErrorLog { queue: None }
    }

    /// Queues `error`, reported by `component`, for `errors.<component>`.
    pub fn report(&self, component: &str, error: &Error, at: Where<'_>) {
        m::error_reported(component, error.kind());
        let Some(queue) = &self.queue else { return };
        let record = ErrorRecord {
            component: component.to_string(),
            kind: error.kind(),
            code: error.code(),
            message: error.header_text(),
            subject: at.subject.map(str::to_string),
            service: at.service.map(str::to_string),
            operation: at.operation.map(str::to_string),
            trace_id: at
                .traceparent
                .and_then(TraceParent::parse)
                .map(|t| t.trace_id().to_string()),
        };
        let queued = Queued {
            record,
            traceparent: at
                .traceparent
                .and_then(TraceParent::parse)
                .map(|t| t.as_str().to_string()),
        };
        if queue.try_send(queued).is_err() {
            m::error_log_dropped();
        }
    }
}

async fn publish(client: &Client, queued: Queued) -> Result<(), Error> {
    let component = queued.record.component.clone();
    let subject = subjects::errors(&component)?;
    let mut meta = Meta::new(
        format!("urn:switchyard:{component}"),
        format!("{TYPE_PREFIX}{}", queued.record.kind.as_str()),
    )
    .with_content_type(ContentType::Json);
    if let Some(traceparent) = queued.traceparent {
        meta.traceparent = traceparent;
    }
    let message = Outgoing::encode(&Envelope::new(meta, queued.record))?;
    check_size(client, &message)?;
    client
        .publish_with_headers(subject, message.headers, message.payload)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_log_accepts_reports() {
        ErrorLog::disabled().report("gateway", &Error::not_found("x"), Where::default());
    }

    #[test]
    fn records_read_back_as_json() {
        let record = ErrorRecord {
            component: "gateway".into(),
            kind: ErrorKind::NotFound,
            code: 404,
            message: "service \"nope\" is not registered".into(),
            subject: Some("api.nope.say".into()),
            service: None,
            operation: None,
            trace_id: None,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"kind\":\"not_found\""), "{json}");
        assert_eq!(serde_json::from_str::<ErrorRecord>(&json).unwrap(), record);
    }
}
