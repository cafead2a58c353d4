//! Dead letters against a real nats-server: poison and terminated messages of any
//! consumer become one entry each in stream DLQ (the `deadletter` component reading
//! the server's advisories), consumers that dead-letter themselves are skipped, and
//! `switchyard dlq ls|show|replay|purge` run as the real binary.

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy};
use async_nats::jetstream::{AckKind, Context as JetStream, Message};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use switchyard::error::Error;
use switchyard::resilience::deadletter::{
    self, DeadLetter, DeadLetterComponent, Entry, Filter, entry,
};
use switchyard::subjects::headers as h;

const WAIT: Duration = Duration::from_secs(30);
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const PAYLOAD: &str = r#"{"order_id":"o-1","total":12}"#;

async fn orders_stream(js: &JetStream, name: &str, subject: &str, retention: RetentionPolicy) {
    js.create_stream(StreamConfig {
        name: name.into(),
        subjects: vec![subject.into()],
        retention,
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn consumer(js: &JetStream, stream: &str, name: &str, max_deliver: i64) -> PullConsumer {
    js.get_stream(stream)
        .await
        .unwrap()
        .create_consumer(PullConfig {
            durable_name: Some(name.into()),
            ack_policy: AckPolicy::Explicit,
            max_deliver,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn publish(js: &JetStream, subject: &str) -> u64 {
    let mut headers = HeaderMap::new();
    headers.insert("ce-id", "original-id");
    headers.insert("traceparent", TRACEPARENT);
    headers.insert("x-tenant", "acme");
    js.publish_with_headers(
        subject.to_string(),
        headers,
        Bytes::from_static(PAYLOAD.as_bytes()),
    )
    .await
    .unwrap()
    .await
    .unwrap()
    .sequence
}

/// The next message of `consumer`, if one comes within a second.
async fn next(consumer: &PullConsumer) -> Option<Message> {
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    batch.next().await.map(Result::unwrap)
}

/// Every DLQ entry whose original subject matches `pattern`.
async fn entries(js: &JetStream, pattern: &str) -> Vec<Entry> {
    let stream = entry::dlq_stream(js).await.unwrap();
    let filter = Filter {
        pattern: Some(pattern.into()),
        ..Filter::default()
    };
    entry::select(&stream, &filter).await.unwrap()
}

/// Waits until consumer `deadletter` has handled every advisory stored so far.
async fn advisories_handled(js: &JetStream) {
    common::until("advisories handled", WAIT, || async {
        let stream = js.get_stream("DLQ_ADVISORIES").await.ok()?;
        let info = stream.consumer_info("deadletter").await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
}

fn header<'a>(entry: &'a Entry, name: &str) -> &'a str {
    entry
        .header(name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

fn dlq(server: &common::TestServer, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["dlq"];
    all.extend_from_slice(args);
    let url = server.url();
    all.extend_from_slice(&["--nats", &url]);
    common::run_to_end(&all, &std::env::temp_dir())
}

#[tokio::test]
async fn a_poison_message_lands_once_after_max_deliveries_and_replay_delivers_it_again() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    orders_stream(&js, "ORDERS", "orders.>", RetentionPolicy::Limits).await;
    let billing = consumer(&js, "ORDERS", "billing", 3).await;
    let seq = publish(&js, "orders.eu").await;

    // Fail every delivery while no deadletter component runs: the advisory waits in
    // stream DLQ_ADVISORIES.
    let mut deliveries = Vec::new();
    while let Some(message) = next(&billing).await {
        deliveries.push(message.info().unwrap().delivered);
        message.ack_with(AckKind::Nak(None)).await.unwrap();
    }
    assert_eq!(
        deliveries,
        vec![1, 2, 3],
        "max_deliver 3 delivers three times"
    );

    let _deadletter = common::supervise(&server, Box::new(DeadLetterComponent)).await;
    common::until("the dead letter", WAIT, || async {
        (!entries(&js, "orders.>").await.is_empty()).then_some(())
    })
    .await;
    advisories_handled(&js).await;
    let stored = entries(&js, "orders.>").await;
    assert_eq!(stored.len(), 1, "one failure, one entry");
    let letter = &stored[0];
    assert_eq!(letter.subject, "dlq.orders.eu");
    assert_eq!(letter.payload, PAYLOAD.as_bytes());
    assert_eq!(header(letter, "ce-id"), "original-id");
    assert_eq!(header(letter, "traceparent"), TRACEPARENT);
    assert_eq!(header(letter, "x-tenant"), "acme");
    assert_eq!(header(letter, h::ORIGINAL_SUBJECT), "orders.eu");
    assert_eq!(header(letter, h::ORIGINAL_SEQ), format!("ORDERS:{seq}"));
    assert_eq!(header(letter, h::DLQ_CONSUMER), "billing");
    assert_eq!(header(letter, h::DLQ_DELIVERIES), "3");
    assert_eq!(header(letter, h::DLQ_COMPONENT), "deadletter");
    assert_eq!(header(letter, h::DLQ_CODE), "502");
    assert!(header(letter, h::DLQ_REASON).contains("max deliveries"));
    assert!(header(letter, h::DLQ_FIRST_FAILURE) <= header(letter, h::DLQ_LAST_FAILURE));

    // The same advisory again (a redelivery, a second server) and a malformed one add
    // nothing, and do not hold up the consumer.
    let advisories = js.get_stream("DLQ_ADVISORIES").await.unwrap();
    let advisory = advisories.get_raw_message(1).await.unwrap();
    client
        .publish(advisory.subject.clone(), advisory.payload.clone())
        .await
        .unwrap();
    client
        .publish(advisory.subject.clone(), Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    common::until("three advisories stored", WAIT, || async {
        let info = js
            .get_stream("DLQ_ADVISORIES")
            .await
            .ok()?
            .get_info()
            .await
            .ok()?;
        (info.state.messages == 3).then_some(())
    })
    .await;
    advisories_handled(&js).await;
    assert_eq!(
        entries(&js, "orders.>").await.len(),
        1,
        "a repeated advisory stores one entry"
    );

    // Replay: the same payload reaches consumer billing again, linked to the entry.
    let (code, out, err) = dlq(&server, &["replay", &letter.seq.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 1, failed 0, skipped 0"), "{out}");
    let again = next(&billing).await.expect("the replay is delivered");
    let headers = again.headers.clone().unwrap();
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
    assert_eq!(again.subject.as_str(), "orders.eu");
    assert_eq!(again.payload, PAYLOAD.as_bytes());
    assert_eq!(get(h::REPLAYED_FROM), Some(format!("DLQ:{}", letter.seq)));
    assert_eq!(get("x-tenant").as_deref(), Some("acme"));
    assert_eq!(get("traceparent").as_deref(), Some(TRACEPARENT));
    assert_ne!(get("ce-id").as_deref(), Some("original-id"));
    assert!(get(h::DLQ_REASON).is_none() && get(h::ORIGINAL_SUBJECT).is_none());
    assert_eq!(
        again.info().unwrap().delivered,
        1,
        "a new message, not a redelivery"
    );
}

#[tokio::test]
async fn terminated_messages_land_once_even_when_the_original_is_gone() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let _deadletter = common::supervise(&server, Box::new(DeadLetterComponent)).await;
    orders_stream(&js, "ORDERS", "orders.>", RetentionPolicy::Limits).await;
    orders_stream(&js, "JOBS", "jobs.>", RetentionPolicy::WorkQueue).await;
    let billing = consumer(&js, "ORDERS", "billing", 5).await;
    let worker = consumer(&js, "JOBS", "worker", 5).await;
    // Data sync's consumers dead-letter by themselves: their advisories are skipped.
    let sync = consumer(&js, "DATA", "sync-billing", 5).await;

    let seq = publish(&js, "orders.eu").await;
    let job = publish(&js, "jobs.resize").await;
    publish(&js, "data.in.shop").await;
    for consumer in [&billing, &worker, &sync] {
        let message = next(consumer).await.expect("a message");
        message.ack_with(AckKind::Term).await.expect("terminate");
    }
    common::until("both dead letters", WAIT, || async {
        let all = entries(&js, ">").await;
        (all.len() >= 2).then_some(())
    })
    .await;
    advisories_handled(&js).await;

    let all = entries(&js, ">").await;
    assert_eq!(
        all.len(),
        2,
        "{:?}",
        all.iter().map(|e| &e.subject).collect::<Vec<_>>()
    );
    let terminated = all.iter().find(|e| e.subject == "dlq.orders.eu").unwrap();
    assert_eq!(terminated.payload, PAYLOAD.as_bytes());
    assert_eq!(header(terminated, h::DLQ_CODE), "422");
    assert_eq!(header(terminated, h::DLQ_DELIVERIES), "1");
    assert_eq!(header(terminated, h::ORIGINAL_SEQ), format!("ORDERS:{seq}"));
    // The work-queue stream removed the job on term: the failure is still recorded.
    let gone = all.iter().find(|e| e.subject == "dlq._gone.JOBS").unwrap();
    assert!(gone.payload.is_empty());
    assert!(gone.original_subject().is_none());
    assert_eq!(header(gone, h::ORIGINAL_SEQ), format!("JOBS:{job}"));
    assert_eq!(header(gone, h::DLQ_CONSUMER), "worker");

    // Nothing to replay for the gone one: skipped, not failed.
    let (code, out, err) = dlq(&server, &["replay", &gone.seq.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 0, failed 0, skipped 1"), "{out}");
}

#[tokio::test]
async fn an_original_too_large_to_copy_is_still_recorded() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let _deadletter = common::supervise(&server, Box::new(DeadLetterComponent)).await;
    orders_stream(&js, "ORDERS", "orders.>", RetentionPolicy::Limits).await;
    let reports = consumer(&js, "ORDERS", "reports", 5).await;
    // Fits alone; with the failure headers added it exceeds max_payload.
    let size = client.server_info().max_payload - 64;
    let seq = js
        .publish("orders.big", vec![b'x'; size].into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let message = next(&reports).await.expect("the big message");
    message.ack_with(AckKind::Term).await.unwrap();

    common::until("the dead letter", WAIT, || async {
        (!entries(&js, ">").await.is_empty()).then_some(())
    })
    .await;
    advisories_handled(&js).await;
    let all = entries(&js, ">").await;
    assert_eq!(all.len(), 1);
    let letter = &all[0];
    assert_eq!(letter.subject, "dlq._gone.ORDERS");
    assert!(letter.payload.is_empty());
    assert_eq!(header(letter, h::ORIGINAL_SEQ), format!("ORDERS:{seq}"));
    assert!(
        header(letter, h::DLQ_REASON).contains("the copy was refused"),
        "{}",
        header(letter, h::DLQ_REASON)
    );
}

/// Stores a dead letter the way data sync does, on `subject`.
async fn dead_letter(js: &JetStream, subject: &str, seq: u64) -> u64 {
    let mut headers = HeaderMap::new();
    headers.insert("ce-id", format!("record-{seq}").as_str());
    let error = Error::new(switchyard::ErrorKind::Permanent, "target refused it");
    let letter = DeadLetter {
        component: "sync",
        subject,
        headers: &headers,
        payload: Bytes::from_static(b"\x81\xa1a\x01"),
        error: &error,
        deliveries: 1,
        origin: format!("DATA:{seq}"),
        target: Some("billing"),
    };
    deadletter::publish(js, &letter).await.unwrap()
}

#[tokio::test]
async fn the_dlq_commands_list_show_replay_and_purge() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    orders_stream(&js, "ORDERS", "orders.>", RetentionPolicy::Limits).await;
    let first = dead_letter(&js, "orders.eu", 1).await;
    let second = dead_letter(&js, "orders.us", 2).await;
    let other = dead_letter(&js, "invoices.eu", 3).await;

    let (code, out, err) = dlq(&server, &["ls", "--subject", "orders.*"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3, "a header and two rows:\n{out}");
    assert!(
        out.contains("orders.eu") && out.contains("sync/billing"),
        "{out}"
    );
    assert!(!out.contains("invoices.eu"), "{out}");
    let (_, out, _) = dlq(&server, &["ls", "--json", "--since", "10m"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    let seqs: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![first, second, other], "{out}");
    let (_, out, _) = dlq(&server, &["ls", "--until", "1h"]);
    assert!(out.contains("no dead letters match"), "{out}");

    let (code, out, _) = dlq(&server, &["show", &first.to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Switchyard-Dlq-Reason: target refused it"),
        "{out}"
    );
    assert!(
        out.contains("\"a\": 1"),
        "MessagePack shown as JSON:\n{out}"
    );

    let (code, out, _) = dlq(&server, &["replay", "--subject", "orders.*", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("dry run: would replay 2, failed 0, skipped 0"),
        "{out}"
    );
    assert_eq!(
        js.get_stream("ORDERS")
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages,
        0
    );

    let (code, out, err) = dlq(&server, &["replay", &first.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(stream ORDERS)"), "{out}");
    let orders = js.get_stream("ORDERS").await.unwrap();
    let replayed = orders
        .get_last_raw_message_by_subject("orders.eu")
        .await
        .unwrap();
    assert_eq!(
        replayed.headers.get(h::REPLAYED_FROM).map(|v| v.as_str()),
        Some(format!("DLQ:{first}").as_str())
    );
    assert!(replayed.headers.get(h::TARGET).is_none());

    // Purge refuses without --yes when nobody can be asked, then deletes.
    let (code, _, err) = dlq(&server, &["purge", "--subject", "orders.*"]);
    assert_ne!(code, 0);
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = dlq(&server, &["purge", "--subject", "orders.*", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 2"), "{out}");
    let (code, out, err) = dlq(&server, &["purge", &other.to_string(), "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 1"), "{out}");
    assert!(entries(&js, ">").await.is_empty());
}

#[tokio::test]
async fn a_replay_the_stream_refuses_is_counted_and_fails_the_command() {
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(StreamConfig {
        name: "TINY".into(),
        subjects: vec!["tiny.>".into()],
        max_message_size: 8,
        ..Default::default()
    })
    .await
    .unwrap();
    let refused = dead_letter(&js, "tiny.x", 1).await;
    let fine = dead_letter(&js, "orders.eu", 2).await;

    let (code, out, err) = dlq(
        &server,
        &["replay", &refused.to_string(), &fine.to_string()],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("failed DLQ:{refused} to tiny.x")),
        "{out}"
    );
    assert!(
        out.contains(&format!("replayed DLQ:{fine} to orders.eu (core NATS)")),
        "{out}"
    );
    assert!(out.contains("replayed 1, failed 1, skipped 0"), "{out}");
    assert!(err.contains("1 of 2 replays failed"), "{err}");
}

#[tokio::test]
async fn bad_input_gets_one_clear_line() {
    let (server, _client) = common::provisioned().await;
    let cases: [(&[&str], &str); 5] = [
        (&["show", "999999"], "no dead letter with sequence 999999"),
        (
            &["ls", "--subject", "orders..eu"],
            "invalid subject pattern",
        ),
        (
            &["ls", "--subject", "orders.>.eu"],
            "invalid subject pattern",
        ),
        (&["ls", "--since", "last tuesday"], "invalid --since"),
        (&["replay"], "name the entries to replay"),
    ];
    for (args, expected) in cases {
        let (code, out, err) = dlq(&server, args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let (code, _, err) = dlq(&server, &["replay", "999999"]);
    assert_eq!(code, 1);
    assert!(err.contains("no dead letter with sequence 999999"), "{err}");
}
