//! `switchyard logs` (read stream `LOGS`) and `switchyard log-level` (ask or change every
//! instance's filter through `sys.log.level`).

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;

use super::logs::{GATHER, LogRecord};
use crate::config::Config;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::subjects::{STREAM_LOGS, SYS_LOG_LEVEL, validate_token};

/// Levels from the most to the least severe.
const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new records as they come.
    #[arg(long, short)]
    pub follow: bool,
    /// The least severe level shown: error, warn, info, debug or trace.
    #[arg(long, default_value = "trace")]
    pub level: String,
    /// Only this component's records (gateway, sync, coordinator, …).
    #[arg(long)]
    pub component: Option<String>,
    /// How far back to start.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub since: Duration,
    /// Print each record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogLevelArgs {
    /// The new filter (`sync=debug,info`); without it, every instance says its filter.
    pub filter: Option<String>,
}

/// The subjects for "`level` and more severe" of `component`.
pub fn subjects(level: &str, component: Option<&str>) -> Result<Vec<String>, Error> {
    let Some(position) = LEVELS.iter().position(|l| *l == level) else {
        return Err(Error::invalid_input(format!(
            "unknown level {level:?}: one of {LEVELS:?}"
        )));
    };
    let component = match component {
        Some(c) => {
            validate_token("component", c)?;
            c
        }
        None => "*",
    };
    Ok(LEVELS[..=position]
        .iter()
        .map(|l| format!("logs.{l}.{component}"))
        .collect())
}

pub async fn logs(config: Config, args: LogsArgs) -> Result<(), Error> {
    let filters = subjects(&args.level, args.component.as_deref())?;
    let client = crate::nats::connect::connect_tool(&config, "logs").await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(STREAM_LOGS.name)
        .await
        .map_err(|e| Error::nats("open stream LOGS (created by switchyard up)", e))?;
    let since = time::OffsetDateTime::now_utc() - args.since;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filters,
            deliver_policy: DeliverPolicy::ByStartTime { start_time: since },
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("read stream LOGS", e))?;
    let mut pending = consumer.cached_info().num_pending;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats("read stream LOGS", e))?;
    while args.follow || pending > 0 {
        let Some(message) = messages.next().await else {
            break;
        };
        let message = message.map_err(|e| Error::nats("read stream LOGS", e))?;
        pending = message.info().map_or(0, |i| i.pending);
        let record =
            Envelope::<LogRecord>::decode(message.headers.as_ref(), &message.payload, "log")
                .map(|e| e.data);
        match (record, args.json) {
            (Ok(record), true) => {
                println!("{}", serde_json::to_string(&record).unwrap_or_default())
            }
            (Ok(record), false) => println!("{}", line(&record)),
            (Err(err), _) => println!("(unreadable record on {}: {err})", message.subject),
        }
    }
    Ok(())
}

/// `time level component: message key=value …`
pub fn line(record: &LogRecord) -> String {
    let mut line = format!(
        "{} {:<5} {}: {}",
        record.time, record.level, record.component, record.message
    );
    for (key, value) in &record.fields {
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

pub async fn log_level(config: Config, args: LogLevelArgs) -> Result<(), Error> {
    let client = crate::nats::connect::connect_tool(&config, "log-level").await?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| Error::nats("subscribe for answers", e))?;
    let payload = args.filter.clone().unwrap_or_default();
    client
        .publish_with_reply(SYS_LOG_LEVEL, inbox, payload.into())
        .await?;
    client.flush().await.map_err(|e| Error::nats("send", e))?;
    let mut answered = 0;
    let mut refused = None;
    let deadline = tokio::time::sleep(GATHER);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            next = replies.next() => {
                let Some(reply) = next else { break };
                if let Some(err) = crate::envelope::error_from_reply(reply.headers.as_ref()) {
                    refused = Some(err);
                    continue;
                }
                answered += 1;
                let text = String::from_utf8_lossy(&reply.payload);
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                println!(
                    "{}  {}",
                    answer["instance"].as_str().unwrap_or("?"),
                    answer["filter"].as_str().unwrap_or("?")
                );
            }
        }
    }
    match (refused, answered) {
        (Some(err), _) => Err(err),
        (None, 0) => Err(Error::unavailable(
            "no instance answered sys.log.level (is switchyard running?)",
        )),
        (None, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_means_it_and_everything_more_severe() {
        assert_eq!(
            subjects("warn", Some("sync")).unwrap(),
            ["logs.error.sync", "logs.warn.sync"]
        );
        assert_eq!(subjects("error", None).unwrap(), ["logs.error.*"]);
        assert!(subjects("loud", None).is_err());
        assert!(subjects("info", Some("a.b")).is_err());
    }
}
