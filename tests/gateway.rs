//! The API gateway on a real server: `api.<service>.<operation>` over NATS and
//! `POST /v1/<service>/<operation>` over HTTP, forwarding to a test service that is a
//! plain queue subscriber registered in KV `registry`; every error code the gateway
//! answers by itself; live policies; the `nats` CLI through the gateway.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard::component::responder::ErrorBody;
use switchyard::component::supervisor::Supervisor;
use switchyard::config::GatewayConfig;
use switchyard::envelope::{self, ContentType};
use switchyard::error::{Error, ErrorKind};
use switchyard::integration::gateway::GatewayComponent;
use switchyard::integration::registry::Registrar;
use switchyard::subjects::headers as h;

const WAIT: Duration = Duration::from_secs(30);
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

struct Running {
    server: common::TestServer,
    client: Client,
    http: SocketAddr,
    supervisor: Supervisor,
}

/// A provisioned server with the gateway running (default timeout `timeout`).
async fn start(timeout: Duration) -> Running {
    let (server, client) = common::provisioned().await;
    let http = common::free_addr();
    let gateway = GatewayComponent::new(GatewayConfig {
        http,
        timeout,
        ..GatewayConfig::default()
    });
    let supervisor = common::supervise(&server, Box::new(gateway)).await;
    Running {
        server,
        client,
        http,
        supervisor,
    }
}

/// Headers of every request the test service received.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

/// A service that is a plain queue subscriber on `svc.<service>.say`: it echoes the
/// payload after `delay`, with its own ce-* headers; a payload it cannot decode gets
/// its 400 error reply; `{"fail": <code>}` gets an error told in headers only.
async fn serve(client: &Client, service: &str, delay: Duration) -> Seen {
    let seen = Seen::default();
    let mut requests = client
        .queue_subscribe(format!("svc.{service}.say"), "q".into())
        .await
        .expect("subscribe");
    switchyard::nats::connect::round_trip(client)
        .await
        .expect("subscribed");
    let (client, record) = (client.clone(), seen.clone());
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            record
                .lock()
                .unwrap()
                .push(request.headers.clone().unwrap_or_default());
            let client = client.clone();
            tokio::spawn(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let (headers, payload) = answer(&request);
                if let Some(reply) = request.reply {
                    let _ = client.publish_with_headers(reply, headers, payload).await;
                }
            });
        }
    });
    seen
}

fn answer(request: &Message) -> (HeaderMap, Bytes) {
    let asked = request.headers.clone().unwrap_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(h::CE_SPECVERSION, "1.0");
    headers.insert(h::CE_ID, "svc-reply-id");
    headers.insert(h::CE_SOURCE, "urn:test:echo");
    headers.insert(h::CE_TYPE, "io.test.echo.reply");
    headers.insert("X-Echo", "yes");
    for (from, to) in [
        (h::CE_ID, h::CE_CAUSATIONID),
        (h::CE_CORRELATIONID, h::CE_CORRELATIONID),
        (h::TRACEPARENT, h::TRACEPARENT),
    ] {
        if let Some(value) = asked.get(from) {
            headers.insert(to, value.as_str());
        }
    }
    let codec = asked
        .get(h::CE_DATACONTENTTYPE)
        .map_or(ContentType::Json, |v| {
            ContentType::parse(v.as_str()).unwrap()
        });
    headers.insert(h::CE_DATACONTENTTYPE, codec.mime());
    match codec.decode::<Value>(&request.payload) {
        Ok(value) if value.get("fail").is_some() => {
            headers.insert(h::SERVICE_ERROR, "told in headers only");
            headers.insert(h::SERVICE_ERROR_CODE, value["fail"].to_string());
            (headers, Bytes::new())
        }
        Ok(_) => (headers, request.payload.clone()),
        Err(err) => {
            headers.insert(h::SERVICE_ERROR, err.message());
            headers.insert(h::SERVICE_ERROR_CODE, err.code().to_string());
            (
                headers,
                codec.encode(&ErrorBody::from(&err)).unwrap().into(),
            )
        }
    }
}

/// Registers a new instance of `service` with operation `say`, heartbeating every second.
async fn register(client: &Client, service: &str) -> Registrar {
    let instance = uuid::Uuid::now_v7().simple().to_string();
    let entry = common::registry_entry(service, &instance);
    Registrar::register(client, entry, Duration::from_secs(1))
        .await
        .expect("register")
}

/// A raw request: headers and payload exactly as given.
async fn call(
    client: &Client,
    subject: &str,
    headers: HeaderMap,
    payload: &[u8],
) -> Result<Message, async_nats::RequestError> {
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(Bytes::copy_from_slice(payload))
        .timeout(Some(WAIT));
    client.send_request(subject.to_string(), request).await
}

async fn call_ok(client: &Client, subject: &str, headers: HeaderMap, payload: &[u8]) -> Message {
    call(client, subject, headers, payload)
        .await
        .expect("a reply, never a timeout")
}

/// The error a reply carries, if any.
fn error_of(reply: &Message) -> Option<Error> {
    envelope::error_from_reply(reply.headers.as_ref())
}

fn header<'a>(reply: &'a Message, name: &str) -> Option<&'a str> {
    reply.headers.as_ref()?.get(name).map(|v| v.as_str())
}

/// Waits until the gateway routes `api.<service>.say` to a live service.
async fn until_routed(client: &Client, service: &str) {
    let subject = format!("api.{service}.say");
    common::eventually_async(WAIT, || async {
        let reply = call(client, &subject, HeaderMap::new(), br#"{"ping":1}"#)
            .await
            .ok()?;
        error_of(&reply).is_none().then_some(())
    })
    .await
    .expect("the gateway routes to the service");
}

/// The kind of the error `subject` is answered with, waiting for the view to catch up.
async fn until_error(client: &Client, subject: &str, kind: ErrorKind) -> Error {
    common::eventually_async(WAIT, || async {
        let reply = call(client, subject, HeaderMap::new(), br#"{"text":"x"}"#)
            .await
            .ok()?;
        error_of(&reply).filter(|err| err.kind() == kind)
    })
    .await
    .unwrap_or_else(|| panic!("{subject} never answered {kind}"))
}

async fn assert_still_serving(client: &Client) {
    let reply = call_ok(
        client,
        "api.echo.say",
        HeaderMap::new(),
        br#"{"still":"here"}"#,
    )
    .await;
    assert!(error_of(&reply).is_none(), "{:?}", reply.headers);
    assert_eq!(&reply.payload[..], br#"{"still":"here"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwards_and_passes_the_reply_through_unchanged() {
    let metrics = switchyard::observability::metrics::install();
    let running = start(Duration::from_secs(5)).await;
    let client = &running.client;
    let seen = serve(client, "echo", Duration::ZERO).await;
    let _echo = register(client, "echo").await;
    until_routed(client, "echo").await;

    let mut headers = HeaderMap::new();
    headers.insert(h::CE_ID, "req-1");
    headers.insert(h::CE_CORRELATIONID, "corr-1");
    headers.insert(h::CE_DATACONTENTTYPE, "application/json");
    headers.insert(h::TRACEPARENT, TRACEPARENT);
    headers.insert(h::TRACESTATE, "vendor=1");
    headers.insert(h::TIMEOUT_MS, "1500");
    let reply = call_ok(client, "api.echo.say", headers, br#"{"text":"hi"}"#).await;
    // The service's reply, exactly as it sent it.
    assert_eq!(&reply.payload[..], br#"{"text":"hi"}"#);
    assert_eq!(header(&reply, h::CE_ID), Some("svc-reply-id"));
    assert_eq!(header(&reply, h::CE_SOURCE), Some("urn:test:echo"));
    assert_eq!(header(&reply, h::CE_CAUSATIONID), Some("req-1"));
    assert_eq!(header(&reply, h::CE_CORRELATIONID), Some("corr-1"));
    assert_eq!(header(&reply, "X-Echo"), Some("yes"));
    // The caller's headers reached the service, with what is left of its budget.
    let asked = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(asked.get(h::TRACEPARENT).unwrap().as_str(), TRACEPARENT);
    assert_eq!(asked.get(h::TRACESTATE).unwrap().as_str(), "vendor=1");
    assert_eq!(asked.get(h::CE_ID).unwrap().as_str(), "req-1");
    let left: u64 = asked.get(h::TIMEOUT_MS).unwrap().as_str().parse().unwrap();
    assert!((1..=1500).contains(&left), "{left}");

    // MessagePack the gateway cannot read is not its business: the service answers.
    let mut packed = HeaderMap::new();
    packed.insert(h::CE_DATACONTENTTYPE, "application/msgpack");
    let reply = call_ok(client, "api.echo.say", packed, b"\xc1\xc1 garbage").await;
    assert_eq!(error_of(&reply).unwrap().kind(), ErrorKind::InvalidInput);
    assert_eq!(header(&reply, h::CE_SOURCE), Some("urn:test:echo"));
    let body: ErrorBody = ContentType::MsgPack.decode(&reply.payload).unwrap();
    assert_eq!(body.error.code, 400);
    assert_still_serving(client).await;

    // A content type nobody speaks: refused by the gateway, never forwarded.
    let before = seen.lock().unwrap().len();
    let mut text = HeaderMap::new();
    text.insert(h::CE_DATACONTENTTYPE, "text/plain");
    let reply = call_ok(client, "api.echo.say", text, b"hello").await;
    assert_eq!(
        error_of(&reply).unwrap().kind(),
        ErrorKind::UnsupportedMediaType
    );
    assert_eq!(header(&reply, h::CE_SOURCE), Some("urn:switchyard:gateway"));
    let body: ErrorBody = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body.error.code, 415);
    assert_eq!(seen.lock().unwrap().len(), before);
    assert_still_serving(client).await;

    // Subjects that are not api.<service>.<operation>, and a bad deadline.
    for subject in [
        "api.echo",
        "api.echo.say.x",
        "api.ech$o.say",
        "api.echo.s%y",
    ] {
        let reply = call_ok(client, subject, HeaderMap::new(), b"{}").await;
        assert_eq!(
            error_of(&reply).map(|e| e.kind()),
            Some(ErrorKind::InvalidInput),
            "{subject}"
        );
        assert_still_serving(client).await;
    }
    let mut bad_deadline = HeaderMap::new();
    bad_deadline.insert(h::TIMEOUT_MS, "soon");
    let reply = call_ok(client, "api.echo.say", bad_deadline, b"{}").await;
    assert_eq!(error_of(&reply).unwrap().kind(), ErrorKind::InvalidInput);

    // Fits for the caller, not once the gateway's headers are added: 413, or the
    // client refuses it itself.
    let max = client.server_info().max_payload;
    let near = vec![b' '; max - 20];
    match call(client, "api.echo.say", HeaderMap::new(), &near).await {
        Ok(reply) => assert_eq!(
            error_of(&reply).map(|e| e.kind()),
            Some(ErrorKind::PayloadTooLarge)
        ),
        Err(err) => assert_eq!(err.kind(), async_nats::RequestErrorKind::MaxPayloadExceeded),
    }
    let huge = vec![b' '; max + 1];
    let err = call(client, "api.echo.say", HeaderMap::new(), &huge)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::RequestErrorKind::MaxPayloadExceeded);
    assert_still_serving(client).await;

    // Label values come from the registry, never from the caller's text.
    let rendered = metrics.render();
    let counted = |labels: &[&str]| {
        rendered.lines().any(|line| {
            line.starts_with("switchyard_gateway_requests_total{")
                && labels.iter().all(|label| line.contains(label))
        })
    };
    assert!(
        counted(&[r#"service="echo""#, r#"operation="say""#, r#"code="200""#]),
        "{rendered}"
    );
    assert!(
        counted(&[r#"service="echo""#, r#"operation="say""#, r#"code="415""#]),
        "{rendered}"
    );
    assert!(
        counted(&[
            r#"service="unknown""#,
            r#"operation="unknown""#,
            r#"code="400""#
        ]),
        "{rendered}"
    );
    assert!(!rendered.contains("ech$o"), "{rendered}");
    assert!(
        rendered.contains("switchyard_gateway_request_duration_seconds_bucket{"),
        "{rendered}"
    );
    drop(running.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_is_404_unreachable_is_503_and_the_view_follows_the_registry() {
    let running = start(Duration::from_secs(5)).await;
    let client = &running.client;

    // Never registered: 404 at once, although the caller would wait 30 s.
    let reply = call_ok(client, "api.nope.say", HeaderMap::new(), b"{}").await;
    let err = error_of(&reply).unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.message().contains("nope"), "{err}");

    // Registered, but nobody subscribed: 503 naming the service.
    let _ghost = register(client, "ghost").await;
    let err = until_error(client, "api.ghost.say", ErrorKind::Unavailable).await;
    assert!(err.message().contains("ghost"), "{err}");

    // A live service without the operation: 404 naming it.
    let _seen = serve(client, "echo", Duration::ZERO).await;
    let echo = register(client, "echo").await;
    until_routed(client, "echo").await;
    let reply = call_ok(client, "api.echo.shout", HeaderMap::new(), b"{}").await;
    let err = error_of(&reply).unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.message().contains("shout"), "{err}");

    // Deregistered: no longer routed to, although its subscriber still listens.
    echo.deregister().await.expect("deregister");
    let err = until_error(client, "api.echo.say", ErrorKind::Unavailable).await;
    assert!(err.message().contains("echo"), "{err}");

    // Expired (stopped heartbeating without deregistering): the same.
    let flaky = register(client, "flaky").await;
    let _seen = serve(client, "flaky", Duration::ZERO).await;
    until_routed(client, "flaky").await;
    drop(flaky);
    until_error(client, "api.flaky.say", ErrorKind::Unavailable).await;
    drop(running.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_follow_the_live_policy_and_the_callers_deadline() {
    let running = start(Duration::from_secs(10)).await;
    let client = &running.client;
    let _seen = serve(client, "slow", Duration::from_millis(1500)).await;
    let _slow = register(client, "slow").await;
    until_routed(client, "slow").await;

    let js = async_nats::jetstream::new(client.clone());
    let policies = js.get_key_value("policies").await.unwrap();
    policies
        .put("slow", r#"{"timeout_ms": 300, "retries": 2}"#.into())
        .await
        .unwrap();
    let err = until_error(client, "api.slow.say", ErrorKind::Timeout).await;
    assert!(
        err.message().contains("slow") && err.message().contains("300"),
        "{err}"
    );

    // Raised while running: the same call now succeeds.
    policies
        .put("slow", r#"{"timeout_ms": 20000}"#.into())
        .await
        .unwrap();
    until_routed(client, "slow").await;

    // The caller's own deadline is shorter: it wins, and the service is told.
    let mut headers = HeaderMap::new();
    headers.insert(h::TIMEOUT_MS, "200");
    let reply = call_ok(client, "api.slow.say", headers, b"{}").await;
    let err = error_of(&reply).unwrap();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.message().contains("200"), "{err}");

    // A malformed policy is ignored: the default (10 s) applies, no crash.
    policies.put("slow", "not json".into()).await.unwrap();
    policies
        .put("slow", r#"{"timeout_ms": 300}"#.into())
        .await
        .unwrap();
    until_error(client, "api.slow.say", ErrorKind::Timeout).await;
    policies.put("slow", "not json".into()).await.unwrap();
    until_routed(client, "slow").await;
    drop(running.server);
}

/// `http_post` off the runtime's threads.
async fn post(
    addr: SocketAddr,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
) -> (u16, String, Value) {
    tokio::task::spawn_blocking(move || {
        let (status, head, body) =
            common::http_post(addr, path, &headers, &body).expect("an HTTP answer");
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("a JSON body ({e}), got {status} {head} {body}"));
        (status, head, json)
    })
    .await
    .unwrap()
}

async fn get(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || common::http_get(addr, path).expect("an HTTP answer"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_takes_the_same_path_and_answers_json() {
    let running = start(Duration::from_secs(5)).await;
    let (client, http) = (&running.client, running.http);
    let seen = serve(client, "echo", Duration::ZERO).await;
    let _slow_seen = serve(client, "slow", Duration::from_millis(1500)).await;
    let _echo = register(client, "echo").await;
    let _slow = register(client, "slow").await;
    until_routed(client, "echo").await;
    until_routed(client, "slow").await;

    let (status, head, body) = post(
        http,
        "/v1/echo/say",
        vec![("traceparent", TRACEPARENT), ("ce-id", "http-1")],
        br#"{"text":"hi"}"#.to_vec(),
    )
    .await;
    assert_eq!((status, &body), (200, &json!({"text": "hi"})), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("ce-causationid: http-1"), "{head}");
    let asked = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(asked.get(h::TRACEPARENT).unwrap().as_str(), TRACEPARENT);
    assert_eq!(
        asked.get(h::CE_DATACONTENTTYPE).unwrap().as_str(),
        "application/json"
    );

    let (status, _, body) = post(http, "/v1/nope/say", vec![], b"{}".to_vec()).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], json!(404));
    assert_eq!(body["error"]["kind"], json!("not_found"));

    let timeout = vec![("X-Request-Timeout", "200")];
    let (status, _, body) = post(http, "/v1/slow/say", timeout, b"{}".to_vec()).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("slow"));

    // The service's own errors: with a body, and told in headers only.
    let (status, _, body) = post(http, "/v1/echo/say", vec![], b"{not json".to_vec()).await;
    assert_eq!(
        (status, &body["error"]["kind"]),
        (400, &json!("invalid_input"))
    );
    let fail = br#"{"fail": 422}"#.to_vec();
    let (status, _, body) = post(http, "/v1/echo/say", vec![], fail).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["message"], json!("told in headers only"));

    let text = vec![("Content-Type", "text/plain")];
    let (status, _, _) = post(http, "/v1/echo/say", text, b"hi".to_vec()).await;
    assert_eq!(status, 415);
    let (status, _, _) = post(http, "/v1/ech%20o/say", vec![], b"{}".to_vec()).await;
    assert_eq!(status, 400);
    let huge = vec![b' '; client.server_info().max_payload + 1];
    let (status, _, body) = post(http, "/v1/echo/say", vec![], huge).await;
    assert_eq!(status, 413, "{body}");

    let (status, list) = get(http, "/v1/services").await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "slow"]);
    assert_eq!(list["services"][0]["live"], json!(1));
    assert_eq!(get(http, "/v2/nothing").await.0, 404);

    let (status, _, _) = post(http, "/v1/echo/say", vec![], br#"{"a":1}"#.to_vec()).await;
    assert_eq!(status, 200);
    drop(running.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_stop_answers_accepted_requests_on_both_ingresses() {
    let running = start(Duration::from_secs(10)).await;
    let (client, http) = (running.client.clone(), running.http);
    let seen = serve(&client, "slow", Duration::from_millis(1500)).await;
    let _slow = register(&client, "slow").await;
    until_routed(&client, "slow").await;
    let before = seen.lock().unwrap().len();

    let nats = tokio::spawn({
        let client = client.clone();
        async move { call(&client, "api.slow.say", HeaderMap::new(), br#"{"n":1}"#).await }
    });
    let web = tokio::spawn(post(http, "/v1/slow/say", vec![], br#"{"n":2}"#.to_vec()));
    common::eventually_async(WAIT, || async {
        (seen.lock().unwrap().len() == before + 2).then_some(())
    })
    .await
    .expect("both requests reached the service");
    let report = running.supervisor.stop(WAIT).await;
    assert!(report.finished_in_time, "{report:?}");
    let reply = nats.await.unwrap().expect("answered");
    assert!(error_of(&reply).is_none());
    assert_eq!(&reply.payload[..], br#"{"n":1}"#);
    assert_eq!(web.await.unwrap().0, 200);
    // Afterwards the HTTP port is closed.
    let refused = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(http).is_err());
    assert!(refused.await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nats_cli_reaches_a_service_through_the_gateway() {
    let running = start(Duration::from_secs(5)).await;
    let client = &running.client;
    let _seen = serve(client, "echo", Duration::ZERO).await;
    let _echo = register(client, "echo").await;
    until_routed(client, "echo").await;
    let url = running.server.url();
    let stdout = tokio::task::spawn_blocking(move || {
        common::nats_cli(&url, &["req", "api.echo.say", r#"{"text":"hi"}"#, "--raw"])
    })
    .await
    .unwrap();
    let reply: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(reply, json!({"text": "hi"}));
}
