//! Least-privilege NATS access (`nats/auth.conf`, `up --secure`): the file spells out
//! every grant, and on a real nats-server started as secure mode starts it, every user
//! can do its work (each action checked by its outcome) while foreign subjects, other
//! buckets and `$SYS` are refused: the server's permissions violations are what the
//! denials assert on, never a timeout. The whole binary under `up --secure` is
//! tests/security_up.rs.

mod common;
#[path = "security/probe.rs"]
mod probe;

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, push};
use bytes::Bytes;
use futures::StreamExt;
use switchyard::nats::secure;

use common::{repo_path, until};
use probe::{SecureServer, consume, request, respond, stored};

const WAIT: Duration = Duration::from_secs(20);

fn all_users() -> Vec<&'static str> {
    let components: Vec<&'static str> = switchyard::app::catalog()
        .iter()
        .map(|c| c.name())
        .collect();
    secure::users(&components)
}

/// Every quoted string of `auth.conf` outside comments, and the user blocks' names.
fn grants_and_users(text: &str) -> (Vec<String>, Vec<String>) {
    let mut quoted = Vec::new();
    let mut users = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        let strings: Vec<String> = line
            .split('"')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        if line.starts_with("user:") {
            users.extend(strings);
        } else {
            quoted.extend(strings);
        }
    }
    (quoted, users)
}

#[test]
fn auth_conf_spells_out_every_grant() {
    let text = std::fs::read_to_string(repo_path("nats/auth.conf")).unwrap();
    assert_eq!(
        text,
        secure::AUTH_CONF,
        "the binary compiles nats/auth.conf in"
    );
    let (grants, users) = grants_and_users(&text);
    assert!(grants.len() > 100, "{} grants", grants.len());
    for grant in &grants {
        let forbidden = [">", "$JS.>", "$JS.API.>", "*.>", "$JS.*.>"];
        assert!(!forbidden.contains(&grant.as_str()), "grant {grant:?}");
        assert!(!grant.contains(' '), "grant {grant:?}");
    }
    // No unquoted subject slipped in: every `>` of the file sits inside a quoted grant.
    let outside: usize = text
        .lines()
        .filter(|l| !l.trim().starts_with('#'))
        .map(|l| {
            l.split('"')
                .step_by(2)
                .map(|p| p.matches('>').count())
                .sum::<usize>()
        })
        .sum();
    assert_eq!(outside, 0, "a `>` outside quotes");
    let mut expected: Vec<String> = all_users().iter().map(|u| u.to_string()).collect();
    let mut listed = users.clone();
    expected.sort();
    listed.sort();
    assert_eq!(listed, expected, "one user per component, plus the others");
    for user in &users {
        let reference = format!("password: ${}", secure::password_var(user));
        assert!(text.contains(&reference), "{user}: {reference}");
    }
    assert_eq!(text.matches("password:").count(), users.len());
}

#[test]
fn subjects_md_documents_every_user() {
    let text = std::fs::read_to_string(repo_path("subjects.md")).unwrap();
    let section = text
        .split("\n## Users and permissions\n")
        .nth(1)
        .expect("a \"Users and permissions\" section in subjects.md");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut documented: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    let mut users = all_users();
    documented.sort();
    users.sort();
    assert_eq!(documented, users);
}

/// What each user is refused besides `$SYS.>`, `>` and the rest every user is:
/// `user: <publishes> | <subscriptions>`.
const REFUSALS: &str = "
gateway: $KV.registry.echo.i1 $JS.API.STREAM.INFO.KV_tasks data.in.orders $JS.API.DIRECT.GET.KV_cache.$KV.cache.x | svc.> _INBOX_services.>
instance: api.echo.say $KV.coord.leader | api.> sys.status
registry: $KV.registry.echo.i1 $JS.API.STREAM.INFO.KV_flows | events.>
flow: $JS.API.CONSUMER.CREATE.DATA.sync-billing.data.in.orders data.in.orders $JS.API.STREAM.INFO.KV_registry | data.in.>
sync: $KV.cache.demo.k1 $KV.registry.echo.i1 $JS.API.STREAM.INFO.KV_tasks $JS.API.CONSUMER.CREATE.TASKS.tasks-echo.tasks.work.echo.say | api.>
tasks: $KV.cache.demo.k1 svc.echo.say $JS.API.CONSUMER.CREATE.TASKS.tasks-echo.tasks.work.echo.say | tasks.work.>
cache: $KV.tasks.t1 $JS.API.STREAM.INFO.KV_registry svc.echo.say | api.>
coordinator: api.echo.say $KV.flows.rule data.in.orders $KV.tasks.t1 | svc.>
monitor: $KV.registry.echo.i1 $KV.coord.leader api.echo.say | events.>
deadletter: $KV.registry.echo.i1 $JS.API.CONSUMER.CREATE.EVENTS $JS.API.STREAM.MSG.GET.KV_registry | dlq.>
services: api.echo.say $KV.flows.rule $KV.policies.echo $JS.API.STREAM.INFO.KV_cache events.sys.health.changed | api.> _INBOX.>
client: svc.echo.say $KV.registry.echo.i1 $JS.API.STREAM.INFO.KV_registry events.sys.health.changed tasks.work.echo.say sys.log.level $JS.API.DIRECT.GET.KV_policies.$KV.policies.echo $JS.API.CONSUMER.CREATE.EVENTS $JS.API.STREAM.INFO.EVENTS | svc.> _INBOX_gateway.> logs.> api.>
operator: $KV.registry.echo.i1 $KV.tasks.t1 $JS.API.STREAM.PURGE.DATA | _INBOX_gateway.>
switchyard: api.echo.say $KV.registry.echo.i1 $JS.API.STREAM.INFO.KV_registry | api.>
provisioner: $JS.API.STREAM.CREATE.OTHER $KV.registry.echo.i1 $JS.API.CONSUMER.CREATE.EVENTS $JS.API.STREAM.PURGE.DATA | events.>
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_can_do_its_work_and_is_denied_the_rest() {
    let server = SecureServer::start().await;
    let mut probes = std::collections::BTreeMap::new();
    for user in all_users() {
        probes.insert(user, server.probe(user).await);
    }
    let p = |user: &str| &probes[user];
    let mut allowed = 0;

    // Request-reply through the gateway: client → api → gateway → svc → services.
    respond(p("services"), "svc.echo.say", "hi").await;
    let gateway = p("gateway").client.clone();
    let mut api = gateway.subscribe("api.echo.say").await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = api.next().await {
            let answer = gateway.request("svc.echo.say", request.payload).await;
            if let (Some(reply), Ok(answer)) = (request.reply, answer) {
                let _ = gateway.publish(reply, answer.payload).await;
            }
        }
    });
    switchyard::nats::connect::round_trip(&p("gateway").client)
        .await
        .unwrap();
    assert_eq!(request(p("client"), "api.echo.say").await, "hi");
    allowed += 4;
    for (user, subject) in [
        ("instance", "sys.ping"),
        ("instance", "sys.echo"),
        ("registry", "sys.registry.list"),
        ("monitor", "sys.status"),
        ("coordinator", "sys.coord.leader"),
        ("cache", "cache.get.demo.k1"),
        ("tasks", "tasks.submit.echo.say"),
    ] {
        let subject: &'static str = subject;
        respond(p(user), subject, user).await;
        assert_eq!(request(p("client"), subject).await, user);
        allowed += 1;
    }
    respond(p("services"), "$SRV.STATS.echo.i1", "stats").await;
    assert_eq!(
        request(p("coordinator"), "$SRV.STATS.echo.i1").await,
        "stats"
    );
    assert_eq!(request(p("monitor"), "$SRV.STATS.echo.i1").await, "stats");
    allowed += 2;

    // KV: services register, the registry follows the bucket and reads it back.
    let watch_registry = p("registry").kv("registry").await;
    let mut watch = watch_registry.watch_all().await.unwrap();
    p("services")
        .kv("registry")
        .await
        .put("echo.i1", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let seen = tokio::time::timeout(WAIT, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.key, "echo.i1");
    for reader in [
        "registry",
        "gateway",
        "monitor",
        "coordinator",
        "sync",
        "tasks",
    ] {
        let entry = p(reader).kv("registry").await.get("echo.i1").await.unwrap();
        assert!(entry.is_some(), "{reader} reads the registry");
        allowed += 1;
    }
    allowed += 2;
    for (user, bucket, key) in [
        ("coordinator", "coord", "leader"),
        ("tasks", "tasks", "t1"),
        ("services", "tasks", "t2"),
        ("cache", "cache", "demo.k1"),
        ("sync", "cache", "status.billing.r1"),
        ("sync", "registry", "switchyard-sync.i1"),
        ("operator", "flows", "rule"),
        ("operator", "policies", "echo"),
    ] {
        let store = p(user).kv(bucket).await;
        store.put(key, Bytes::from_static(b"{}")).await.unwrap();
        assert!(
            store.get(key).await.unwrap().is_some(),
            "{user} {bucket}/{key}"
        );
        allowed += 1;
    }
    for (user, bucket) in [
        ("gateway", "policies"),
        ("flow", "flows"),
        ("sync", "flows"),
    ] {
        let mut keys = p(user).kv(bucket).await.keys().await.unwrap();
        assert!(keys.next().await.is_some(), "{user} lists {bucket}");
        allowed += 1;
    }

    // Streams: sources publish, flow and sync consume DATA, workers TASKS, and so on.
    stored(p("client"), "data.in.orders.eu").await;
    assert_eq!(
        consume(p("flow"), "DATA", "flow", "data.in.>").await,
        "data.in.orders.eu"
    );
    assert_eq!(
        consume(p("sync"), "DATA", "sync-billing", "data.in.>").await,
        "data.in.orders.eu"
    );
    let mut confirmations = p("client")
        .client
        .subscribe("data.confirm.>")
        .await
        .unwrap();
    switchyard::nats::connect::round_trip(&p("client").client)
        .await
        .unwrap();
    stored(p("sync"), "data.confirm.orders").await;
    tokio::time::timeout(WAIT, confirmations.next())
        .await
        .unwrap()
        .unwrap();
    stored(p("flow"), "data.unrouted").await;
    stored(p("tasks"), "tasks.work.echo.say").await;
    assert_eq!(
        consume(p("services"), "TASKS", "tasks-echo", "tasks.work.echo.>").await,
        "tasks.work.echo.say"
    );
    let mut task_events = p("client")
        .client
        .subscribe("tasks.events.*")
        .await
        .unwrap();
    // The tasks component listens too while a `tasks.get` waits for the task to end.
    let mut waiting_get = p("tasks")
        .client
        .subscribe("tasks.events.t1")
        .await
        .unwrap();
    for probe in ["client", "tasks"] {
        switchyard::nats::connect::round_trip(&p(probe).client)
            .await
            .unwrap();
    }
    p("services")
        .client
        .publish("tasks.events.t1", Bytes::new())
        .await
        .unwrap();
    for events in [&mut task_events, &mut waiting_get] {
        tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap();
    }
    // The client reads events as they are published.
    let mut live = p("client").client.subscribe("events.sys.>").await.unwrap();
    switchyard::nats::connect::round_trip(&p("client").client)
        .await
        .unwrap();
    let health = stored(p("coordinator"), "events.sys.health.changed").await;
    let event = tokio::time::timeout(WAIT, live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.subject.as_str(), "events.sys.health.changed");
    stored(p("gateway"), "events.sys.breaker.opened").await;
    stored(p("services"), "events.sys.service.registered").await;
    stored(p("registry"), "events.sys.service.expired").await;
    stored(p("coordinator"), "alerts.warning.dlq").await;
    stored(p("deadletter"), "dlq.events.orders.created").await;
    stored(p("sync"), "dlq.data.in.orders.eu").await;
    stored(p("services"), "dlq.tasks.work.echo.say").await;
    stored(p("client"), "events.orders.created").await;
    allowed += 17;
    let original = p("deadletter").js().get_stream("EVENTS").await.unwrap();
    let message = original.get_raw_message(health).await.unwrap();
    assert_eq!(message.subject.as_str(), "events.sys.health.changed");
    let deadletter_consumer = pull::Config {
        durable_name: Some("deadletter".into()),
        ..Default::default()
    };
    p("deadletter")
        .js()
        .create_consumer_on_stream(deadletter_consumer, "DLQ_ADVISORIES")
        .await
        .unwrap();
    // The operator reads their history through an ordered consumer (`events tail`).
    let events = p("operator").js().get_stream("EVENTS").await.unwrap();
    let ordered = events
        .create_consumer(push::OrderedConfig {
            deliver_subject: p("operator").client.new_inbox(),
            filter_subject: "events.sys.health.changed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ordered = ordered.messages().await.unwrap();
    tokio::time::timeout(WAIT, ordered.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    allowed += 4;
    for (user, subject) in [
        ("switchyard", "logs.info.gateway"),
        ("switchyard", "errors.gateway"),
    ] {
        p(user)
            .client
            .publish(subject, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        switchyard::nats::connect::round_trip(&p(user).client)
            .await
            .unwrap();
        allowed += 1;
    }
    for stream in ["LOGS", "ERRORS"] {
        until(
            &format!("the process's record in {stream}"),
            WAIT,
            || async {
                let mut info = p("monitor").js().get_stream(stream).await.ok()?;
                (info.info().await.ok()?.state.messages == 1).then_some(())
            },
        )
        .await;
    }
    let names: Vec<String> = {
        use futures::TryStreamExt;
        p("operator")
            .js()
            .stream_names()
            .try_collect()
            .await
            .unwrap()
    };
    assert!(names.len() >= 14, "{names:?}");
    allowed += 1;

    for probe in probes.values() {
        assert_eq!(probe.violations(), Vec::<String>::new(), "{}", probe.user);
    }
    assert!(!server.log().contains("Violation"), "{}", server.log());

    // Denials: the same connections, refused by the server.
    let mut denied = 0;
    for probe in probes.values() {
        probe.subscribe_denied("$SYS.>").await;
        probe.subscribe_denied(">").await;
        probe.publish_denied("$SYS.REQ.SERVER.PING").await;
        probe.publish_denied("$JS.API.STREAM.DELETE.EVENTS").await;
        denied += 4;
    }
    for line in REFUSALS.lines().filter(|l| !l.is_empty()) {
        let (user, rest) = line.split_once(": ").unwrap();
        let (publishes, subscriptions) = rest.split_once(" | ").unwrap();
        for subject in publishes.split_whitespace() {
            p(user).publish_denied(subject).await;
            denied += 1;
        }
        for subject in subscriptions.split_whitespace() {
            p(user).subscribe_denied(subject).await;
            denied += 1;
        }
    }
    let log = server.log();
    assert!(log.contains("Publish Violation") && log.contains("Subscription Violation"));
    for (_, password) in server.secrets.server_env() {
        assert!(!log.contains(&password), "a password in the server log");
    }
    println!(
        "security: {} users, {allowed} allowed actions worked, {denied} denials held",
        probes.len()
    );
}
