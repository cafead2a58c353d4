//! `switchyard events tail`: events from stream `EVENTS` as JSON lines, for people.
//!
//! An ordered consumer (ephemeral, in memory, gone when the tail stops) starts at
//! `now - since`. `--subject` narrows what the server sends (`events.sys.>`); `--type`
//! matches the `ce-type` header here, because a type is not part of the subject, with
//! `*` standing for any run of characters, dots included. Each line is
//! `{"subject","seq","time","type","source","id","correlation_id","data"}` with the
//! payload decoded to JSON whichever codec it was sent in; an event that cannot be
//! decoded is still shown, with `"data": null`, `"error"` and the `"raw"` payload.

use std::io::Write;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context as JetStream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::subscribe::{UNTYPED, filter_subject};
use crate::cli::TailArgs;
use crate::config::Config;
use crate::envelope::{ContentType, Meta, decode_value};
use crate::error::Error;
use crate::subjects::{STREAM_EVENTS, headers as h};

/// With `follow` off, the tail also stops when nothing arrives for this long, in case
/// the pending count it trusts is out of date.
const CATCH_UP_IDLE: Duration = Duration::from_secs(5);

/// What to show.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// First event shown: the first stored at or after this time.
    pub since: OffsetDateTime,
    /// Server-side filter under `events.`.
    pub subject: String,
    /// `ce-type` glob, matched here.
    pub type_pattern: Option<String>,
    /// Keep printing new events until stopped, instead of stopping once caught up.
    pub follow: bool,
}

impl TailOptions {
    pub fn from_args(args: &TailArgs) -> Result<TailOptions, Error> {
        let pattern = args.subject.strip_prefix("events.").ok_or_else(|| {
            Error::invalid_input(format!(
                "--subject {:?} is not under events. (e.g. events.sys.>)",
                args.subject
            ))
        })?;
        if args.type_pattern.as_deref() == Some("") {
            return Err(Error::invalid_input("--type needs a pattern"));
        }
        let now = OffsetDateTime::now_utc();
        let since = time::Duration::try_from(args.since)
            .ok()
            .and_then(|back| now.checked_sub(back))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok(TailOptions {
            since,
            subject: filter_subject(pattern)?,
            type_pattern: args.type_pattern.clone(),
            follow: !args.no_follow,
        })
    }
}

/// The command: connect to `--nats` (or the default URL) and print to stdout until
/// caught up (`--no-follow`) or Ctrl-C.
pub async fn run(config: Config, args: TailArgs) -> Result<(), Error> {
    let options = TailOptions::from_args(&args)?;
    let client = crate::nats::connect::connect_tool(&config, "events-tail").await?;
    let js = async_nats::jetstream::new(client);
    let mut out = std::io::stdout();
    tokio::select! {
        result = tail(&js, &options, &mut out) => result.map(|_| ()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// Writes the matching events to `out`, one JSON object per line, and returns how many.
/// A closed output (`| head`) ends the tail without an error.
pub async fn tail<W: Write>(
    js: &JetStream,
    options: &TailOptions,
    out: &mut W,
) -> Result<u64, Error> {
    let stream = js
        .get_stream(STREAM_EVENTS.name)
        .await
        .map_err(|e| Error::nats("look up stream EVENTS", e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            description: Some("switchyard events tail".into()),
            filter_subject: options.subject.clone(),
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: options.since,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("create a tail consumer on EVENTS", e))?;
    if !options.follow && consumer.cached_info().num_pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats("read EVENTS", e))?;
    let mut printed = 0;
    loop {
        let next = if options.follow {
            messages.next().await
        } else {
            match tokio::time::timeout(CATCH_UP_IDLE, messages.next()).await {
                Ok(next) => next,
                Err(_) => break,
            }
        };
        let Some(message) = next else { break };
        let message = message.map_err(|e| Error::nats("read EVENTS", e))?;
        let info = message
            .info()
            .map_err(|e| Error::internal(format!("unexpected EVENTS delivery: {e}")))?;
        let (seq, published, pending) = (info.stream_sequence, info.published, info.pending);
        let msg = &message.message;
        let kind = attribute(msg.headers.as_ref(), h::CE_TYPE);
        let wanted = match &options.type_pattern {
            Some(pattern) => glob(pattern, kind.as_deref().unwrap_or_default()),
            None => true,
        };
        if wanted {
            let line = render(
                &msg.subject,
                seq,
                published,
                msg.headers.as_ref(),
                &msg.payload,
            );
            match writeln!(out, "{line}").and_then(|()| out.flush()) {
                Ok(()) => printed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(printed),
                Err(e) => return Err(Error::internal(format!("cannot write output: {e}"))),
            }
        }
        if !options.follow && pending == 0 {
            break;
        }
    }
    Ok(printed)
}

/// One output line.
#[derive(Serialize)]
struct Record<'a> {
    subject: &'a str,
    seq: u64,
    time: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    source: Option<String>,
    id: Option<String>,
    correlation_id: Option<String>,
    data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
}

fn render(
    subject: &str,
    seq: u64,
    published: OffsetDateTime,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> String {
    let (data, error) = match decode_data(headers, payload) {
        Ok(data) => (data, None),
        Err(err) => (Value::Null, Some(err.message().to_string())),
    };
    let record = Record {
        subject,
        seq,
        time: attribute(headers, h::CE_TIME)
            .unwrap_or_else(|| published.format(&Rfc3339).unwrap_or_default()),
        kind: attribute(headers, h::CE_TYPE),
        source: attribute(headers, h::CE_SOURCE),
        id: attribute(headers, h::CE_ID),
        correlation_id: attribute(headers, h::CE_CORRELATIONID),
        raw: error
            .is_some()
            .then(|| String::from_utf8_lossy(payload).into_owned()),
        data,
        error,
    };
    serde_json::to_string(&record).unwrap_or_else(|e| {
        format!(r#"{{"subject":{subject:?},"seq":{seq},"error":"cannot render: {e}"}}"#)
    })
}

/// The payload as JSON, read with the codec the envelope rule picks.
fn decode_data(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Value, Error> {
    let meta = Meta::from_headers(headers, UNTYPED)?;
    match meta.content_type {
        ContentType::Json => ContentType::Json.decode(payload),
        ContentType::MsgPack => {
            let value: rmpv::Value = ContentType::MsgPack.decode(payload)?;
            serde_json::to_value(value)
                .map_err(|e| Error::invalid_input(format!("MessagePack without a JSON form: {e}")))
        }
    }
}

/// A header as sent (percent-decoded), `None` when absent or empty.
fn attribute(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| decode_value(v.as_str()))
        .filter(|v| !v.is_empty())
}

/// `*` matches any run of characters (dots included); everything else is literal.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == text;
    };
    if text.len() < first.len() + last.len() || !text.starts_with(first) || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_globs() {
        let t = "io.switchyard.sys.service.registered";
        assert!(glob("io.switchyard.sys.service.*", t));
        assert!(glob("io.switchyard.*", t));
        assert!(glob("*.registered", t));
        assert!(glob("io.*.service.*", t));
        assert!(glob("*", t));
        assert!(glob(t, t));
        assert!(!glob("io.switchyard.sys.service", t));
        assert!(!glob("*.expired", t));
        assert!(!glob("io.*.user.*", t));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn renders_msgpack_as_json_and_keeps_bad_payloads_visible() {
        let meta = Meta::new("urn:test", "io.test.thing").with_content_type(ContentType::MsgPack);
        let headers = meta.to_headers();
        let payload = ContentType::MsgPack
            .encode(&serde_json::json!({"n": 1}))
            .unwrap();
        let line = render(
            "events.a.b",
            7,
            OffsetDateTime::UNIX_EPOCH,
            Some(&headers),
            &payload,
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["data"], serde_json::json!({"n": 1}));
        assert_eq!(v["type"], "io.test.thing");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["id"], meta.id.as_str());
        let line = render("events.a.b", 8, OffsetDateTime::UNIX_EPOCH, None, b"{oops");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["data"], Value::Null);
        assert_eq!(v["raw"], "{oops");
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert!(v["error"].as_str().is_some());
    }
}
