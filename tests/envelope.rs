//! The envelope on the wire, against a real nats-server and the real `instance`
//! component: round trips in both codecs, and every class of bad input answered with a
//! typed error while the connection stays up.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use serde_json::json;
use switchyard::component::responder::ErrorBody;
use switchyard::component::supervisor::Supervisor;
use switchyard::envelope::{self, ContentType, Envelope, Meta, publish_durable};
use switchyard::error::ErrorKind;
use switchyard::subjects::{self, headers as h};
use switchyard::system::instance::{Echo, InstanceComponent, Pong};

const TIMEOUT: Duration = Duration::from_secs(5);

struct Running {
    server: common::TestServer,
    client: async_nats::Client,
    _supervisor: Supervisor,
}

async fn start() -> Running {
    let (server, client) = common::provisioned().await;
    let supervisor = common::supervise(&server, Box::new(InstanceComponent)).await;
    Running {
        server,
        client,
        _supervisor: supervisor,
    }
}

/// A raw request: headers and payload exactly as given, the raw reply back.
async fn raw(
    client: &async_nats::Client,
    headers: HeaderMap,
    payload: Vec<u8>,
) -> async_nats::Message {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(payload.into())
        .timeout(Some(TIMEOUT));
    client
        .send_request(subjects::SYS_ECHO, request)
        .await
        .expect("a reply, never a timeout")
}

fn error_of(reply: &async_nats::Message) -> (ErrorKind, ErrorBody) {
    let err = envelope::error_from_reply(reply.headers.as_ref()).unwrap_or_else(|| {
        panic!(
            "an error reply, got {:?} {:?}",
            reply.headers, reply.payload
        )
    });
    let content_type = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(h::CE_DATACONTENTTYPE))
        .map(|v| ContentType::parse(v.as_str()).expect("known content type"))
        .expect("error replies carry a content type");
    let body: ErrorBody = content_type.decode(&reply.payload).expect("error body");
    assert_eq!(body.error.kind, err.kind());
    assert_eq!(body.error.code, err.code());
    (err.kind(), body)
}

async fn assert_still_serving(client: &async_nats::Client) {
    let reply = raw(client, HeaderMap::new(), br#"{"still":"here"}"#.to_vec()).await;
    assert!(envelope::error_from_reply(reply.headers.as_ref()).is_none());
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_round_trip_keeps_attributes_and_data() {
    let running = start().await;
    let data = json!({"text": "héllo \"world\" 100%", "n": [1, 2, 3], "nested": {"ok": true}});
    let meta = Meta::new("urn:test:client with space", "io.switchyard.test")
        .with_content_type(ContentType::MsgPack);
    let request = Envelope::new(meta.clone(), data.clone());
    let reply: Envelope<Echo> = envelope::request(
        &running.client,
        subjects::SYS_ECHO.into(),
        &request,
        TIMEOUT,
    )
    .await
    .expect("echo");
    // What the component read is what we sent, percent-encoding undone.
    assert_eq!(reply.data.meta, meta);
    assert_eq!(serde_json::to_value(&reply.data.data).unwrap(), data);
    // The reply is a follow-up: same conversation and trace, caused by our message.
    assert_eq!(reply.meta.content_type, ContentType::MsgPack);
    assert_eq!(reply.meta.correlation_id, meta.correlation_id);
    assert_eq!(reply.meta.causation_id.as_deref(), Some(meta.id.as_str()));
    assert_eq!(reply.meta.traceparent, meta.traceparent);
    assert_ne!(reply.meta.id, meta.id);
    assert_eq!(
        uuid::Uuid::parse_str(&reply.meta.id)
            .unwrap()
            .get_version_num(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_round_trip_and_bare_requests_are_answered_in_json() {
    let running = start().await;
    let meta = Meta::new("urn:test", "io.switchyard.test").with_content_type(ContentType::Json);
    let reply: Envelope<Echo> = envelope::request(
        &running.client,
        subjects::SYS_ECHO.into(),
        &Envelope::new(meta.clone(), json!({"a": 1})),
        TIMEOUT,
    )
    .await
    .expect("echo");
    assert_eq!(reply.meta.content_type, ContentType::Json);
    assert_eq!(reply.data.meta, meta);

    // What `nats req sys.echo '{"a":1}'` sends: no headers at all.
    let bare = raw(&running.client, HeaderMap::new(), br#"{"a":1}"#.to_vec()).await;
    let headers = bare.headers.clone().expect("reply headers");
    assert_eq!(
        headers.get(h::CE_DATACONTENTTYPE).unwrap().as_str(),
        "application/json"
    );
    assert_eq!(headers.get(h::CE_SPECVERSION).unwrap().as_str(), "1.0");
    let echo: serde_json::Value = serde_json::from_slice(&bare.payload).expect("JSON reply");
    assert_eq!(echo["data"], json!({"a": 1}));
    assert_eq!(echo["meta"]["source"], json!(envelope::UNKNOWN_SOURCE));

    // Content-Type is honoured when ce-datacontenttype is absent.
    let mut headers = HeaderMap::new();
    headers.insert(h::CONTENT_TYPE, "application/msgpack");
    let packed = ContentType::MsgPack.encode(&json!({"b": 2})).unwrap();
    let reply = raw(&running.client, headers, packed).await;
    let echo: Echo = ContentType::MsgPack
        .decode(&reply.payload)
        .expect("msgpack reply");
    assert_eq!(serde_json::to_value(&echo.data).unwrap(), json!({"b": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_by_the_instance() {
    let running = start().await;
    let reply: Envelope<Pong> = envelope::request(
        &running.client,
        subjects::SYS_PING.into(),
        &Envelope::new(Meta::new("urn:test", "io.switchyard.sys.ping"), ()),
        TIMEOUT,
    )
    .await
    .expect("pong");
    assert_eq!(reply.data.components, vec!["instance".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_typed_errors_and_the_connection_survives() {
    let running = start().await;
    let client = &running.client;

    // Unknown content type.
    let mut headers = HeaderMap::new();
    headers.insert(h::CE_DATACONTENTTYPE, "text/plain");
    let (kind, _) = error_of(&raw(client, headers, b"hello".to_vec()).await);
    assert_eq!(kind, ErrorKind::UnsupportedMediaType);

    // Malformed JSON, answered with an error body in JSON.
    let reply = raw(client, HeaderMap::new(), b"{not json".to_vec()).await;
    let (kind, body) = error_of(&reply);
    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(
        body.error.message.contains("JSON"),
        "{}",
        body.error.message
    );
    assert_eq!(
        reply
            .headers
            .as_ref()
            .unwrap()
            .get(h::SERVICE_ERROR_CODE)
            .unwrap()
            .as_str(),
        "400"
    );

    // Truncated MessagePack.
    let mut headers = HeaderMap::new();
    headers.insert(h::CE_DATACONTENTTYPE, "application/msgpack");
    let packed = ContentType::MsgPack
        .encode(&json!({"key": "a long enough value"}))
        .unwrap();
    let (kind, _) =
        error_of(&raw(client, headers.clone(), packed[..packed.len() / 2].to_vec()).await);
    assert_eq!(kind, ErrorKind::InvalidInput);

    // Deeply nested, in both codecs: refused, not a stack overflow.
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (kind, _) = error_of(&raw(client, HeaderMap::new(), deep_json.into_bytes()).await);
    assert_eq!(kind, ErrorKind::InvalidInput);
    let deep_msgpack = vec![0x91u8; 100_000]; // fixarray of one element, nested
    let (kind, _) = error_of(&raw(client, headers.clone(), deep_msgpack).await);
    assert_eq!(kind, ErrorKind::InvalidInput);

    // Wrong CloudEvents version.
    let mut wrong = HeaderMap::new();
    wrong.insert(h::CE_SPECVERSION, "0.3");
    let (kind, _) = error_of(&raw(client, wrong, b"{}".to_vec()).await);
    assert_eq!(kind, ErrorKind::InvalidInput);

    // A request over max_payload is refused before it is sent (the server would close
    // the connection), as a typed error.
    let max = client.server_info().max_payload;
    let huge = Envelope::new(
        Meta::new("urn:test", "io.switchyard.test"),
        serde_bytes_like(max + 1),
    );
    let err = envelope::request::<_, Echo>(client, subjects::SYS_ECHO.into(), &huge, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);

    // A request that fits but whose answer would not: the component answers 413
    // instead of sending a message the server would reject.
    let near = "x".repeat(max - 300);
    let body = serde_json::to_vec(&json!(near)).unwrap();
    let (kind, _) = error_of(&raw(client, HeaderMap::new(), body).await);
    assert_eq!(kind, ErrorKind::PayloadTooLarge);

    // An invalid subject token never reaches the wire.
    let err = subjects::api("my service", "say").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let err = envelope::request::<_, Echo>(
        client,
        "sys.echo with space".into(),
        &Envelope::new(Meta::new("urn:test", "t"), ()),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    assert_still_serving(client).await;
    drop(running.server);
}

fn serde_bytes_like(len: usize) -> String {
    "y".repeat(len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_publish_sets_msg_id_and_deduplicates() {
    let running = start().await;
    let js = async_nats::jetstream::new(running.client.clone());
    let event = Envelope::new(
        Meta::new("urn:test", "io.switchyard.test.created"),
        json!({"order": 7}),
    );
    let subject = subjects::event("test", "created").unwrap();
    let first = publish_durable(&js, &running.client, subject.clone(), &event)
        .await
        .expect("stored");
    let again = publish_durable(&js, &running.client, subject, &event)
        .await
        .expect("acknowledged as duplicate");
    assert_eq!(first, again, "the same ce-id is stored once");
    let mut stream = js.get_stream("EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
    let stored = stream
        .get_last_raw_message_by_subject("events.test.created")
        .await
        .unwrap();
    let headers = stored.headers;
    assert_eq!(headers.get(h::NATS_MSG_ID).unwrap().as_str(), event.meta.id);
    assert_eq!(headers.get(h::CE_ID).unwrap().as_str(), event.meta.id);
}
