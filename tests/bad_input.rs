//! Every class of bad input against a real running system (`switchyard up --demo` on its
//! own nats-server, the example services `echo` and `slow` included): the gateway over
//! NATS and HTTP, records on `data.in`, KV writes of rules, policies and registry
//! entries (with the `nats` CLI, as an operator would), `sys.coord.rules.put`,
//! `cache.*`, `tasks.*`, `sys.log.level` and `sys.echo`. For each class the test
//! observes what the system answers and checks what else must hold (the next valid
//! request works, nothing is lost: a malformed record is in DLQ with its reason, the
//! rules in force stay). After each class a valid request through the gateway is still
//! answered unchanged, and after each bad record, the invalid flow rule and the invalid
//! policies a valid record is still delivered and confirmed. The table of classes is data
//! ([`table::EXPECTED`]), and the table in RELIABILITY.md ("## Bad input") must be the
//! same, row by row.

mod common;
#[path = "bad_input/system.rs"]
mod system;
#[path = "bad_input/table.rs"]
mod table;

use async_nats::HeaderMap;
use switchyard::subjects::headers as h;
use system::{System, answer, http_answer, message_of, source_of};
use table::Observed;

/// `ce-source` of the gateway's own answers.
const GATEWAY: &str = "urn:switchyard:gateway";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, *value);
    }
    map
}

fn nested(depth: usize) -> Vec<u8> {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_bad_input_class_gets_its_answer_and_nothing_is_lost() {
    let sys = System::start().await;
    let mut seen = Observed::default();
    // Records an answer, then a valid request must still be answered, unchanged.
    macro_rules! check {
        ($class:expr, $to:expr, $answer:expr $(,)?) => {{
            let answer = $answer;
            seen.check($class, $to, answer);
            sys.still_works().await;
        }};
    }
    let json_ct = [(h::CE_DATACONTENTTYPE, "application/json")];

    // ---- The gateway over NATS: api.<service>.<operation> ----
    let reply = sys
        .request("api.echo.say", HeaderMap::new(), b"\xc1\xff\x00garbage")
        .await;
    assert_ne!(source_of(&reply), GATEWAY, "the service answered");
    check!(
        "Garbage bytes (not JSON, not UTF-8)",
        "`api.echo.say`",
        answer(&reply)
    );

    let text = headers(&[(h::CE_DATACONTENTTYPE, "text/plain")]);
    let reply = sys.request("api.echo.say", text, b"hello").await;
    assert_eq!(source_of(&reply), GATEWAY, "the gateway answered");
    check!("Unknown content type", "`api.echo.say`", answer(&reply));

    let reply = sys
        .request("api.echo.say", headers(&json_ct), br#"{"text":"#)
        .await;
    assert!(
        message_of(&reply).contains("line 1 column"),
        "{}",
        message_of(&reply)
    );
    check!("Invalid JSON (truncated)", "`api.echo.say`", answer(&reply));

    let reply = sys
        .request("api.slow.wait", HeaderMap::new(), br#"{"ms":"soon"}"#)
        .await;
    assert!(
        message_of(&reply).contains("expected u64"),
        "{}",
        message_of(&reply)
    );
    check!(
        "Valid JSON of the wrong shape",
        "`api.slow.wait`",
        answer(&reply)
    );

    let reply = sys
        .request("api.echo.say", HeaderMap::new(), &nested(200))
        .await;
    assert!(
        message_of(&reply).contains("recursion limit"),
        "{}",
        message_of(&reply)
    );
    check!(
        "Deeply nested JSON (200 levels)",
        "`api.echo.say`",
        answer(&reply)
    );

    let reply = sys
        .request("api.echo.say", HeaderMap::new(), br#"{"n":1e400}"#)
        .await;
    assert!(
        message_of(&reply).contains("number out of range"),
        "{}",
        message_of(&reply)
    );
    check!("Huge number (`1e400`)", "`api.echo.say`", answer(&reply));

    let reply = sys.request("api.echo.say", HeaderMap::new(), b"").await;
    check!("Empty payload", "`api.echo.say`", answer(&reply));

    let reply = sys
        .request("api.echo.say", HeaderMap::new(), br#"{"no":"headers"}"#)
        .await;
    assert_eq!(&reply.payload[..], br#"{"no":"headers"}"#);
    check!("No headers at all", "`api.echo.say`", answer(&reply));

    let old = headers(&[(h::CE_SPECVERSION, "0.3")]);
    let reply = sys.request("api.echo.say", old, b"{}").await;
    check!(
        "Wrong `ce-specversion` (0.3)",
        "`api.echo.say`",
        answer(&reply)
    );

    let odd = headers(&[(h::TRACEPARENT, "00-not-a-trace"), (h::CE_ID, "%FF%FE%00")]);
    let reply = sys.request("api.echo.say", odd, b"{}").await;
    let trace = reply.headers.as_ref().and_then(|h| h.get(h::TRACEPARENT));
    assert!(
        trace.is_some_and(|t| t.as_str().starts_with("00-")),
        "a new trace"
    );
    check!(
        "Malformed `traceparent`, non-UTF-8 `ce-id`",
        "`api.echo.say`",
        answer(&reply),
    );
    let reply = sys
        .request("api.echo.say", headers(&[(h::TIMEOUT_MS, "soon")]), b"{}")
        .await;
    check!(
        "Malformed `Switchyard-Timeout-Ms`",
        "`api.echo.say`",
        answer(&reply)
    );

    let reply = sys.request("api.nosuch.say", HeaderMap::new(), b"{}").await;
    check!("Unknown service", "`api.nosuch.say`", answer(&reply));
    let reply = sys
        .request("api.echo.nosuch", HeaderMap::new(), b"{}")
        .await;
    check!("Unknown operation", "`api.echo.nosuch`", answer(&reply));
    let reply = sys.request("api.ec$ho.say", HeaderMap::new(), b"{}").await;
    check!("Invalid subject token", "`api.ec$ho.say`", answer(&reply));
    let reply = sys
        .request("api.echo.say.more", HeaderMap::new(), b"{}")
        .await;
    check!(
        "Too many subject tokens",
        "`api.echo.say.more`",
        answer(&reply)
    );

    let max = sys.client.max_payload();
    let mut big = vec![b'a'; max - 200];
    (big[0], big[max - 201]) = (b'"', b'"');
    let reply = sys.request("api.echo.say", HeaderMap::new(), &big).await;
    check!(
        "Payload that fits but not with the forwarded headers",
        "`api.echo.say`",
        answer(&reply),
    );
    let too_big = vec![b'7'; max + 1];
    let refused = sys.try_request("api.echo.say", &too_big).await;
    assert!(refused.is_err(), "the client refuses to send it");
    assert_eq!(
        sys.client.connection_state(),
        async_nats::connection::State::Connected
    );
    check!(
        "Payload over the server's `max_payload` (1 MiB)",
        "`api.echo.say`",
        "refused by the client before sending".into(),
    );

    // ---- The gateway over HTTP ----
    let h_text = [("Content-Type", "text/plain")];
    let (status, body) = sys.http_post("/v1/echo/say", &h_text, b"hi");
    check!(
        "Unknown content type",
        "`POST /v1/echo/say`",
        http_answer(status, &body)
    );
    let (status, body) = sys.http_post("/v1/echo/say", &[], br#"{"text":"#);
    check!(
        "Invalid JSON (truncated)",
        "`POST /v1/echo/say`",
        http_answer(status, &body)
    );
    let (status, body) = sys.http_post("/v1/echo/say", &[], b"\xff\xfe\x00");
    check!(
        "Non-UTF-8 body",
        "`POST /v1/echo/say`",
        http_answer(status, &body)
    );
    let (status, body) = sys.http_post("/v1/echo/say", &[], &vec![b' '; 2 << 20]);
    check!(
        "Oversized body (2 MiB)",
        "`POST /v1/echo/say`",
        http_answer(status, &body)
    );
    let (status, body) = sys.http_post("/v1/nosuch/say", &[], b"{}");
    check!(
        "Unknown service",
        "`POST /v1/nosuch/say`",
        http_answer(status, &body)
    );
    let (status, body) = sys.http_post("/v1/ec$ho/say", &[], b"{}");
    check!(
        "Invalid path token",
        "`POST /v1/ec$ho/say`",
        http_answer(status, &body)
    );
    let (status, body) = sys.http_post("/v1/nothing", &[], b"{}");
    check!(
        "Unknown route",
        "`POST /v1/nothing`",
        http_answer(status, &body)
    );
    let (status, body) = sys.http_post("/v1/echo/say", &[("X-Request-Timeout", "soon")], b"{}");
    check!(
        "Malformed `X-Request-Timeout`",
        "`POST /v1/echo/say`",
        http_answer(status, &body)
    );

    // ---- Records on data.in: the flow rule `bad-input` routes data.in.bad.> to echo ----
    sys.put_flow_rule().await;
    for (class, subject, headers, payload) in [
        (
            "Invalid JSON record",
            "data.in.bad.json",
            HeaderMap::new(),
            br#"{"id":"#.to_vec(),
        ),
        (
            "Record in an unknown content type",
            "data.in.bad.text",
            headers(&[("Content-Type", "text/csv")]),
            b"id,1".to_vec(),
        ),
        (
            "Deeply nested record (200 levels)",
            "data.in.bad.deep",
            HeaderMap::new(),
            nested(200),
        ),
        (
            "Record without its key field",
            "data.in.bad.nokey",
            HeaderMap::new(),
            br#"{"x":1}"#.to_vec(),
        ),
        (
            "Record key with a line break",
            "data.in.bad.linebreak",
            HeaderMap::new(),
            br#"{"id":"a\nb"}"#.to_vec(),
        ),
        (
            "Record `ce-id` decoding to a line break",
            "data.in.bad.ceid",
            headers(&[(h::CE_ID, "r%0D%0A1")]),
            br#"{"id":"k"}"#.to_vec(),
        ),
        (
            "Empty record",
            "data.in.bad.empty",
            HeaderMap::new(),
            Vec::new(),
        ),
    ] {
        sys.publish_record(subject, headers, payload.clone()).await;
        let entry = sys.dead_letter(&format!("dlq.{subject}"), &payload).await;
        check!(class, &format!("`{subject}`"), entry);
        sys.record_still_delivered().await;
    }
    sys.publish_record(
        "data.in.nomatch.x",
        HeaderMap::new(),
        br#"{"id":"u"}"#.to_vec(),
    )
    .await;
    let copy = sys.unrouted("data.in.nomatch.x").await;
    check!("Record no rule matches", "`data.in.nomatch.x`", copy);

    // ---- Rules and policies written straight into KV, as an operator could ----
    let cli = |args: &[&str]| common::nats_cli(&sys.url, args);
    cli(&[
        "kv",
        "put",
        "flows",
        "bad-input",
        r#"{"name":"bad-input","match":{"subject":"nope"}}"#,
    ]);
    let logged = sys
        .warning_about("ignoring an invalid flow rule", "bad-input")
        .await;
    sys.record_still_delivered().await;
    check!("Invalid flow rule", "KV `flows`", logged);
    for (key, value, component, says, name) in [
        (
            "echo",
            r#"{"timeout_ms":"5s"}"#,
            "gateway policy",
            "ignoring policy",
            "echo",
        ),
        (
            "sync.echo",
            r#"{"max_deliver":0}"#,
            "sync policy",
            "ignoring sync policy",
            "echo",
        ),
        (
            "cache.demo",
            r#"{"ttl_ms":-1}"#,
            "cache policy",
            "ignoring cache policy",
            "demo",
        ),
        (
            "health.echo",
            r#"{"interval_ms":1}"#,
            "health rules",
            "refusing health rules",
            "echo",
        ),
    ] {
        cli(&["kv", "put", "policies", key, value]);
        let logged = sys.warning_about(says, name).await;
        check!(
            &format!("Invalid {component}"),
            &format!("KV `policies` `{key}`"),
            logged
        );
    }
    sys.record_still_delivered().await;
    let put = sys
        .request("cache.put.demo.after", HeaderMap::new(), b"1")
        .await;
    assert_eq!(answer(&put), "`200`", "namespace demo still stores");
    let got = sys
        .request("cache.get.demo.after", HeaderMap::new(), b"")
        .await;
    assert_eq!(&got.payload[..], b"1", "and serves");
    cli(&["kv", "put", "registry", "echo.bogus", "not json"]);
    let logged = sys
        .warning_about("ignoring malformed registry entry", "echo.bogus")
        .await;
    check!(
        "Malformed registry entry",
        "KV `registry` `echo.bogus`",
        logged
    );
    cli(&[
        "kv",
        "put",
        "coord",
        "rules.kv-bad",
        r#"{"on":"orders.>","actions":[]}"#,
    ]);
    let logged = sys
        .warning_about("refusing a coordination rule", "kv-bad")
        .await;
    assert!(!sys.rules_in_force().await.contains_key("kv-bad"));
    check!(
        "Invalid coordination rule",
        "KV `coord` `rules.kv-bad`",
        logged
    );
    cli(&[
        "kv",
        "put",
        "coord",
        "alerts.kv-bad",
        r#"{"condition":{"mood":{}},"severity":"info"}"#,
    ]);
    let logged = sys.warning_about("refusing an alert rule", "kv-bad").await;
    check!("Invalid alert rule", "KV `coord` `alerts.kv-bad`", logged);

    // ---- Request-reply endpoints ----
    let before = sys.rules_in_force().await;
    let bad_rule = br#"{"on":"a b","actions":[{"drain":{}}]}"#;
    let reply = sys
        .request("sys.coord.rules.put.bad-rule", HeaderMap::new(), bad_rule)
        .await;
    assert_eq!(
        sys.rules_in_force().await,
        before,
        "the rules in force stay"
    );
    check!(
        "Invalid coordination rule",
        "`sys.coord.rules.put.bad-rule`",
        answer(&reply)
    );
    let reply = sys
        .request(
            "sys.coord.rules.put.bad-rule",
            HeaderMap::new(),
            b"\x00\x01",
        )
        .await;
    check!(
        "Garbage bytes (not JSON, not UTF-8)",
        "`sys.coord.rules.put.bad-rule`",
        answer(&reply)
    );

    let junk = b"\x00\xff raw bytes";
    let reply = sys
        .request("cache.put.demo.k1", HeaderMap::new(), junk)
        .await;
    let got = sys
        .request("cache.get.demo.k1", HeaderMap::new(), b"")
        .await;
    assert_eq!(&got.payload[..], junk, "values are bytes, kept as given");
    check!(
        "Garbage bytes (not JSON, not UTF-8)",
        "`cache.put.demo.k1`",
        answer(&reply)
    );
    let reply = sys
        .request("cache.put.demo.k$1", HeaderMap::new(), b"{}")
        .await;
    check!(
        "Invalid subject token",
        "`cache.put.demo.k$1`",
        answer(&reply)
    );
    let text = headers(&[(h::CE_DATACONTENTTYPE, "text/plain")]);
    let reply = sys.request("cache.put.demo.k2", text, b"{}").await;
    let got = sys
        .request("cache.get.demo.k2", HeaderMap::new(), b"")
        .await;
    assert_eq!(answer(&got), "`404 not_found`", "nothing stored");
    check!(
        "Unknown content type",
        "`cache.put.demo.k2`",
        answer(&reply)
    );
    let reply = sys
        .request("cache.get.demo.missing", HeaderMap::new(), b"")
        .await;
    check!("Unknown key", "`cache.get.demo.missing`", answer(&reply));

    let reply = sys
        .request(
            "tasks.submit.slow.wait",
            HeaderMap::new(),
            br#"{"ms":"soon"}"#,
        )
        .await;
    let failed = sys.task_outcome(&reply).await;
    check!(
        "Valid JSON of the wrong shape",
        "`tasks.submit.slow.wait`",
        failed
    );
    let reply = sys
        .request("tasks.submit.nosuch.op", HeaderMap::new(), b"{}")
        .await;
    check!(
        "Unknown service",
        "`tasks.submit.nosuch.op`",
        answer(&reply)
    );
    let reply = sys
        .request("tasks.get.no-such-task", HeaderMap::new(), b"")
        .await;
    check!(
        "Task id that is not a UUID",
        "`tasks.get.no-such-task`",
        answer(&reply)
    );
    let unknown = "tasks.get.0196b2f1-c2d3-7e5f-8a9b-0c1d2e3f4a5b";
    let reply = sys.request(unknown, HeaderMap::new(), b"").await;
    check!("Unknown task id", "`tasks.get.<uuid>`", answer(&reply));

    let filter = sys.log_filter().await;
    let reply = sys
        .request("sys.log.level", HeaderMap::new(), b"sync=[")
        .await;
    assert_eq!(sys.log_filter().await, filter, "the filter in force stays");
    check!("Invalid log filter", "`sys.log.level`", answer(&reply));
    let crafted = b"[request{service=.*.*.*.*.*.*.*.*}]=trace";
    let reply = sys
        .request("sys.log.level", HeaderMap::new(), crafted)
        .await;
    assert_eq!(sys.log_filter().await, filter, "the filter in force stays");
    check!(
        "Log filter with a field filter (found by fuzzing: regex blow-up, a panic)",
        "`sys.log.level`",
        answer(&reply)
    );
    let reply = sys
        .request("sys.log.level", HeaderMap::new(), b"\xff\xfe")
        .await;
    assert_eq!(sys.log_filter().await, filter);
    check!("Non-UTF-8 text", "`sys.log.level`", answer(&reply));

    let packed = headers(&[(h::CE_DATACONTENTTYPE, "application/msgpack")]);
    let reply = sys.request("sys.echo", packed, b"\x93\x01\x02").await;
    check!("Truncated MessagePack", "`sys.echo`", answer(&reply));
    let reply = sys
        .request("sys.registry.get.nosuch", HeaderMap::new(), b"")
        .await;
    check!(
        "Unknown service",
        "`sys.registry.get.nosuch`",
        answer(&reply)
    );

    sys.record_still_delivered().await;
    assert!(sys.up_is_alive(), "switchyard up is still running");
    seen.finish();
}

#[test]
fn reliability_md_shows_the_bad_input_table_as_the_test_checks_it() {
    let doc = std::fs::read_to_string(common::repo_path("RELIABILITY.md")).expect("RELIABILITY.md");
    let section = doc
        .split("\n## Bad input\n")
        .nth(1)
        .expect("a section \"## Bad input\" in RELIABILITY.md");
    let section = section.split("\n## ").next().unwrap_or(section);
    // The first table of the section (the fuzzing figures may follow it).
    let in_doc: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .collect();
    let expected = table::markdown();
    let expected: Vec<&str> = expected.lines().collect();
    for (i, (doc_row, row)) in in_doc.iter().zip(&expected).enumerate() {
        assert_eq!(
            doc_row,
            row,
            "RELIABILITY.md bad-input table, line {}",
            i + 1
        );
    }
    assert_eq!(
        in_doc.len(),
        expected.len(),
        "RELIABILITY.md must have the bad-input table of tests/bad_input/table.rs:\n{}",
        table::markdown()
    );
}
