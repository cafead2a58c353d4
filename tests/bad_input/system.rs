//! The system the bad-input test drives: `switchyard up --demo` as a process on its own
//! embedded nats-server, a client on it, and what the test observes through NATS,
//! HTTP, streams `DLQ`, `DATA` and `LOGS`, and the admin endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use switchyard::envelope::error_from_reply;
use switchyard::subjects::headers as h;

use crate::common::{self, Process, free_addr, http_get};

const WAIT: Duration = Duration::from_secs(30);

/// The flow rule the record classes go through: `data.in.bad.>` to the `echo` example,
/// keyed by the payload's `/id`.
const FLOW_RULE: &str = r#"{"name":"bad-input","match":{"subject":"data.in.bad.>"},
  "targets":[{"name":"echo","service":"echo","operation":"say"}],"key":{"field":"/id"}}"#;

pub struct System {
    up: std::sync::Mutex<Process>,
    pub url: String,
    http: SocketAddr,
    pub client: Client,
    js: async_nats::jetstream::Context,
    probes: AtomicU32,
    _dir: tempfile::TempDir,
}

/// What a NATS reply says: `` `200` `` or `` `<code> <kind>` ``.
pub fn answer(reply: &Message) -> String {
    match error_from_reply(reply.headers.as_ref()) {
        Some(err) => format!("`{} {}`", err.code(), err.kind()),
        None => "`200`".into(),
    }
}

/// The `ce-source` of a reply: who answered.
pub fn source_of(reply: &Message) -> String {
    header_of(reply, h::CE_SOURCE)
}

/// The error text of a reply (`Nats-Service-Error`).
pub fn message_of(reply: &Message) -> String {
    header_of(reply, h::SERVICE_ERROR)
}

fn header_of(reply: &Message, name: &str) -> String {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

/// What an HTTP answer says: `` HTTP `<status>` `` and the error kind of its body.
pub fn http_answer(status: u16, body: &str) -> String {
    let kind = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["kind"].as_str().map(str::to_string));
    match kind {
        Some(kind) => format!("HTTP `{status} {kind}`"),
        None => format!("HTTP `{status}`"),
    }
}

impl System {
    pub async fn start() -> System {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (nats, admin, http) = (free_addr(), free_addr(), free_addr());
        let state = dir.path().join("state");
        let mut up = Process::spawn(
            &[
                "up",
                "--demo",
                "--nats-listen",
                &nats.to_string(),
                "--admin",
                &admin.to_string(),
                "--http",
                &http.to_string(),
                "--data-dir",
                &state.to_string_lossy(),
                "--grace",
                "5s",
            ],
            dir.path(),
        );
        let ready = common::eventually(WAIT, || {
            if let Some(code) = up.wait(Duration::ZERO) {
                panic!("switchyard up exited early with {code}");
            }
            http_get(admin, "/readyz").filter(|(status, _)| *status == 200)
        });
        assert!(ready.is_some(), "/readyz never answered 200");
        let url = format!("nats://{nats}");
        let client = switchyard::nats::connect(&url, "bad-input-test")
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client.clone());
        let system = System {
            up: std::sync::Mutex::new(up),
            url,
            http,
            client,
            js,
            probes: AtomicU32::new(0),
            _dir: dir,
        };
        // The example services register shortly after readiness.
        for subject in ["api.echo.say", "api.slow.wait"] {
            common::until(&format!("{subject} answers"), WAIT, || async {
                let reply = system.try_request(subject, br#"{"ms":1}"#).await.ok()?;
                error_from_reply(reply.headers.as_ref())
                    .is_none()
                    .then_some(())
            })
            .await;
        }
        system
    }

    pub async fn try_request(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<Message, async_nats::RequestError> {
        let request = async_nats::Request::new()
            .payload(Bytes::copy_from_slice(payload))
            .timeout(Some(WAIT));
        self.client.send_request(subject.to_string(), request).await
    }

    /// A raw request, headers and payload as given; a reply must come.
    pub async fn request(&self, subject: &str, headers: HeaderMap, payload: &[u8]) -> Message {
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(Bytes::copy_from_slice(payload))
            .timeout(Some(WAIT));
        self.client
            .send_request(subject.to_string(), request)
            .await
            .unwrap_or_else(|err| panic!("{subject}: a reply, never {err}"))
    }

    /// The next valid request through the gateway is answered, unchanged.
    pub async fn still_works(&self) {
        let reply = self
            .request("api.echo.say", HeaderMap::new(), br#"{"still":"here"}"#)
            .await;
        assert_eq!(answer(&reply), "`200`", "{:?}", reply.headers);
        assert_eq!(&reply.payload[..], br#"{"still":"here"}"#);
    }

    pub fn http_post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
        let (status, _, body) =
            common::http_post(self.http, path, headers, body).expect("an HTTP answer");
        (status, body)
    }

    pub fn up_is_alive(&self) -> bool {
        let mut up = self.up.lock().unwrap_or_else(|e| e.into_inner());
        up.wait(Duration::ZERO).is_none()
    }

    pub async fn put_flow_rule(&self) {
        common::nats_cli(&self.url, &["kv", "put", "flows", "bad-input", FLOW_RULE]);
        self.record_still_delivered().await;
    }

    /// Publishes a record with JetStream and waits for the stream's acknowledgement.
    pub async fn publish_record(&self, subject: &str, headers: HeaderMap, payload: Vec<u8>) {
        self.js
            .publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .expect("publish")
            .await
            .expect("the stream stores the record");
    }

    /// A valid record on `data.in.bad.ok` reaches `echo`: its confirmation is stored.
    pub async fn record_still_delivered(&self) {
        let n = self.probes.fetch_add(1, Ordering::Relaxed);
        let id = format!("probe-{n}");
        let mut headers = HeaderMap::new();
        headers.insert(h::CE_ID, id.as_str());
        let payload = format!(r#"{{"id":"{id}"}}"#).into_bytes();
        self.publish_record("data.in.bad.ok", headers, payload)
            .await;
        common::until(&format!("record {id} confirmed"), WAIT, || async {
            let last = self.last("DATA", "data.confirm.bad").await?;
            String::from_utf8_lossy(&last.payload)
                .contains(&format!(r#""record_id":"{id}""#))
                .then_some(())
        })
        .await;
    }

    async fn last(
        &self,
        stream: &str,
        subject: &str,
    ) -> Option<async_nats::jetstream::message::StreamMessage> {
        let stream = self.js.get_stream(stream).await.ok()?;
        stream.get_last_raw_message_by_subject(subject).await.ok()
    }

    /// The dead letter of a record: waits for it, checks it keeps the original and says
    /// why; `` dead letter `<code>` by <component> ``.
    pub async fn dead_letter(&self, subject: &str, original: &[u8]) -> String {
        let entry = common::until(&format!("a dead letter on {subject}"), WAIT, || async {
            self.last("DLQ", subject).await
        })
        .await;
        assert_eq!(&entry.payload[..], original, "the payload is kept");
        let header = |name: &str| {
            entry
                .headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        assert!(!header(h::DLQ_REASON).is_empty(), "a reason");
        format!(
            "dead letter `{}` by {}",
            header(h::DLQ_CODE),
            header(h::DLQ_COMPONENT)
        )
    }

    /// The copy of an unrouted record on `data.unrouted`.
    pub async fn unrouted(&self, original: &str) -> String {
        common::until("an unrouted copy", WAIT, || async {
            let copy = self.last("DATA", "data.unrouted").await?;
            let from = copy.headers.get(h::ORIGINAL_SUBJECT)?.as_str().to_string();
            (from == original).then_some(())
        })
        .await;
        "copied to `data.unrouted`".into()
    }

    /// The warning a refused value was logged with (stream `LOGS`, `logs.warn.<component>`),
    /// found by what it says and the name it gives: `` warning on `logs.warn.<component>` ``.
    pub async fn warning_about(&self, says: &str, name: &str) -> String {
        common::until(&format!("a warning about {name}"), WAIT, || async {
            let stream = self.js.get_stream("LOGS").await.ok()?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    filter_subject: "logs.warn.>".into(),
                    ..Default::default()
                })
                .await
                .ok()?;
            let pending = consumer.cached_info().num_pending as usize;
            let mut messages = consumer.messages().await.ok()?.take(pending);
            while let Some(Ok(message)) = messages.next().await {
                let text = String::from_utf8_lossy(&message.payload);
                if text.contains(says) && text.contains(name) {
                    return Some(format!("warning on `{}`", message.subject));
                }
            }
            None
        })
        .await
    }

    /// The coordination rules in force (`sys.coord.rules.list`).
    pub async fn rules_in_force(&self) -> BTreeMap<String, Value> {
        let reply = self
            .request("sys.coord.rules.list", HeaderMap::new(), b"")
            .await;
        serde_json::from_slice(&reply.payload).expect("the rules as JSON")
    }

    /// A submitted task's end: it must be accepted, then fail, then be in DLQ.
    pub async fn task_outcome(&self, submitted: &Message) -> String {
        assert_eq!(answer(submitted), "`200`", "accepted");
        let id = serde_json::from_slice::<Value>(&submitted.payload).expect("JSON")["id"]
            .as_str()
            .expect("a task id")
            .to_string();
        let state = common::until(&format!("task {id} final"), WAIT, || async {
            let reply = self
                .request(&format!("tasks.get.{id}"), HeaderMap::new(), b"")
                .await;
            let state: Value = serde_json::from_slice(&reply.payload).ok()?;
            (state["state"] != "submitted" && state["state"] != "working").then_some(state)
        })
        .await;
        common::until("the task's dead letter", WAIT, || async {
            let entry = self.last("DLQ", "dlq.tasks.work.slow.wait").await?;
            (entry.headers.get(h::TASK_ID)?.as_str() == id).then_some(())
        })
        .await;
        format!(
            "accepted, then `{}` `{} {}`; dead letter by tasks",
            state["state"].as_str().unwrap_or_default(),
            state["error"]["code"],
            state["error"]["kind"].as_str().unwrap_or_default()
        )
    }

    /// This instance's log filter (`sys.log.level` with an empty payload asks).
    pub async fn log_filter(&self) -> String {
        let reply = self.request("sys.log.level", HeaderMap::new(), b"").await;
        let answer: Value = serde_json::from_slice(&reply.payload).expect("JSON");
        answer["filter"].as_str().expect("a filter").to_string()
    }
}
