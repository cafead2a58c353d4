//! Health checks, coordination rules and their actions on a real nats-server: a killed
//! instance goes unhealthy, is drained and deregistered by the built-in rule; a slow
//! one is degraded; a rule changed live takes effect and an invalid one is refused.

mod common;

use std::time::Duration;

use async_nats::Client;
use futures::StreamExt;
use serde_json::{Value, json};
use switchyard::integration::registry::{Health, RegistryEntry};
use switchyard::system::coordinator::CoordinatorComponent;
use switchyard::system::coordinator::actions::ActionTaken;
use switchyard::system::health::HealthChanged;

const WAIT: Duration = Duration::from_secs(30);

async fn put_policy(client: &Client, key: &str, value: Value) {
    let kv = async_nats::jetstream::new(client.clone())
        .get_key_value("policies")
        .await
        .unwrap();
    kv.put(key, value.to_string().into()).await.unwrap();
}

async fn entries(client: &Client, service: &str) -> Vec<RegistryEntry> {
    let kv = async_nats::jetstream::new(client.clone())
        .get_key_value("registry")
        .await
        .unwrap();
    let mut keys = kv.keys().await.unwrap();
    let mut found = Vec::new();
    while let Some(Ok(key)) = keys.next().await {
        if key.starts_with(&format!("{service}."))
            && let Ok(Some(value)) = kv.get(&key).await
        {
            found.push(serde_json::from_slice(&value).unwrap());
        }
    }
    found
}

/// The next event on `sub` that `wanted` accepts, within [`WAIT`].
async fn next_event<T: serde::de::DeserializeOwned>(
    sub: &mut async_nats::Subscriber,
    what: &str,
    wanted: impl Fn(&T) -> bool,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
            .expect("subscription open");
        let event: T = decode(&message);
        if wanted(&event) {
            return event;
        }
    }
}

/// Publishes orders until one reaches `sub` (the rule view follows KV a moment later).
async fn order_until_received(
    sub: &mut async_nats::Subscriber,
    order: impl AsyncFn(),
) -> async_nats::Message {
    for _ in 0..60 {
        order().await;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(500), sub.next()).await
        {
            return message;
        }
    }
    panic!("the rule never acted");
}

fn decode<T: serde::de::DeserializeOwned>(message: &async_nats::Message) -> T {
    switchyard::envelope::Envelope::<T>::from_message(message, "test")
        .expect("an event")
        .data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_is_marked_unhealthy_drained_and_deregistered() {
    let (server, client) = common::provisioned().await;
    put_policy(
        &client,
        "health.echo",
        json!({"interval_ms": 200, "timeout_ms": 300, "degraded_ms": 250, "unhealthy_after": 2}),
    )
    .await;
    let mut health = client.subscribe("events.sys.health.changed").await.unwrap();
    let mut actions = client.subscribe("events.sys.action.>").await.unwrap();
    let mut alerts = client.subscribe("alerts.>").await.unwrap();
    let coordinator = common::supervise(
        &server,
        Box::new(CoordinatorComponent::new(Duration::from_secs(1))),
    )
    .await;
    // Override the built-in rule's grace so the test does not wait 10 s.
    let reply = client
        .request(
            "sys.coord.rules.put.unhealthy-instances",
            json!({"on": "sys.health.changed", "when": {"to": "unhealthy"},
                   "actions": [{"drain": {}}, {"deregister": {"after_ms": 500}},
                               {"alert": {"severity": "warning"}}]})
            .to_string()
            .into(),
        )
        .await
        .unwrap();
    assert!(
        reply
            .headers
            .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none())
    );

    // A healthy echo in this process, and a killable one in another (long heartbeat:
    // its entry outlives the test unless an action removes it).
    let survivor = switchyard::demo::echo::service()
        .unwrap()
        .start(&server.client().await)
        .await
        .unwrap();
    let binary = tokio::task::spawn_blocking(common::echo_binary)
        .await
        .unwrap();
    let child = common::Process::spawn_program(
        &binary,
        &["--nats", &server.url(), "--heartbeat", "20s"],
        &std::env::temp_dir(),
    );
    let pid = child.pid();
    let victim = common::until("the example registers", WAIT, || async {
        entries(&client, "echo")
            .await
            .into_iter()
            .find(|e| e.pid == pid)
    })
    .await;
    // Probed and healthy for a while: no change for a healthy instance.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(child); // SIGKILL

    let changed: HealthChanged = next_event(&mut health, "unhealthy", |e: &HealthChanged| {
        e.instance == victim.instance
    })
    .await;
    assert_eq!(
        (changed.from, changed.to),
        (Health::Healthy, Health::Unhealthy)
    );
    assert!(changed.reason.contains("failed"), "{}", changed.reason);

    let mut taken: Vec<(String, String)> = Vec::new();
    while !taken.iter().any(|(a, _)| a == "deregister") || taken.len() < 3 {
        let message = tokio::time::timeout(WAIT, actions.next())
            .await
            .expect("action events")
            .unwrap();
        let event: ActionTaken = decode(&message);
        assert_eq!(event.instance.as_deref(), Some(victim.instance.as_str()));
        if event.action == "deregister" && event.outcome.starts_with("scheduled") {
            continue;
        }
        taken.push((event.action, event.outcome));
    }
    taken.sort();
    assert_eq!(
        taken,
        [
            ("alert".to_string(), "done".to_string()),
            ("deregister".to_string(), "done".to_string()),
            ("drain".to_string(), "done".to_string()),
        ]
    );
    let alert = tokio::time::timeout(WAIT, alerts.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alert.subject.as_str(), "alerts.warning.unhealthy-instances");

    // The victim is gone from the registry, the survivor untouched and serving.
    let left = entries(&client, "echo").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].instance, survivor.id());
    assert_eq!(left[0].health, Health::Healthy);
    for _ in 0..10 {
        let reply = client
            .request("svc.echo.say", "\"hi\"".into())
            .await
            .expect("the survivor answers");
        assert_eq!(&reply.payload[..], b"\"hi\"");
    }
    survivor.stop().await;
    coordinator.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_is_degraded_and_recovers() {
    let (server, client) = common::provisioned().await;
    put_policy(
        &client,
        "health.slow",
        json!({"interval_ms": 300, "degraded_ms": 150, "timeout_ms": 2000,
               "unhealthy_after": 2, "healthy_after": 2}),
    )
    .await;
    let mut health = client.subscribe("events.sys.health.changed").await.unwrap();
    let coordinator = common::supervise(
        &server,
        Box::new(CoordinatorComponent::new(Duration::from_secs(1))),
    )
    .await;
    let slow = switchyard::demo::slow::service(switchyard::demo::slow::Config { ms: 400 })
        .unwrap()
        .start(&server.client().await)
        .await
        .unwrap();
    // Keep it busy with slow calls until it is degraded.
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.request("svc.slow.wait", "{}".into()).await;
            }
        })
    };
    let degraded: HealthChanged =
        next_event(&mut health, "degraded", |_: &HealthChanged| true).await;
    assert_eq!(degraded.service, "slow");
    assert_eq!(
        (degraded.from, degraded.to),
        (Health::Healthy, Health::Degraded)
    );
    let stored = common::until("the registry says degraded", WAIT, || async {
        entries(&client, "slow")
            .await
            .into_iter()
            .find(|e| e.health == Health::Degraded)
    })
    .await;
    assert_eq!(stored.instance, slow.id());

    // Idle, its probes are fast again: healthy, and the heartbeats keep what the
    // checker wrote in the meantime.
    load.abort();
    let healthy: HealthChanged =
        next_event(&mut health, "healthy again", |_: &HealthChanged| true).await;
    assert_eq!(
        (healthy.from, healthy.to),
        (Health::Degraded, Health::Healthy)
    );
    slow.stop().await;
    coordinator.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_changed_live_takes_effect_and_an_invalid_one_is_refused() {
    let (server, client) = common::provisioned().await;
    let coordinator = common::supervise(
        &server,
        Box::new(CoordinatorComponent::new(Duration::from_secs(1))),
    )
    .await;
    common::until("the coordinator leads", WAIT, || async {
        client
            .request("sys.coord.leader", "".into())
            .await
            .ok()
            .filter(|r| {
                r.headers
                    .as_ref()
                    .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none())
            })
    })
    .await;
    let put = |rule: Value| {
        let client = client.clone();
        async move {
            client
                .request("sys.coord.rules.put.shipping", rule.to_string().into())
                .await
                .unwrap()
        }
    };
    let rule = |to: &str| {
        json!({"on": "orders.*", "when": {"region": "eu"},
               "actions": [{"publish": {"subject": to}}]})
    };
    let mut ship = client.subscribe("cmd.ship").await.unwrap();
    let mut hold = client.subscribe("cmd.hold").await.unwrap();
    put(rule("cmd.ship")).await;
    let js = async_nats::jetstream::new(client.clone());
    let order = |region: &str| {
        let (js, client, region) = (js.clone(), client.clone(), region.to_string());
        async move {
            let meta = switchyard::envelope::Meta::new("urn:test", "io.test.order")
                .with_content_type(switchyard::envelope::ContentType::Json);
            switchyard::envelope::publish_durable(
                &js,
                &client,
                "events.orders.created".into(),
                &switchyard::envelope::Envelope::new(meta, json!({"region": region})),
            )
            .await
            .unwrap();
        }
    };

    // The rule in force: EU orders go to cmd.ship; others match nothing.
    order_until_received(&mut ship, async || order("eu").await).await;
    // Changed live: from now on to cmd.hold.
    put(rule("cmd.hold")).await;
    let held = order_until_received(&mut hold, async || order("eu").await).await;
    let data: Value = decode(&held);
    assert_eq!(data["region"], "eu");

    // Invalid: refused with the reason, and the rule in force stays.
    let refused = put(json!({"on": "orders.*", "actions": [{"explode": {}}]})).await;
    let headers = refused.headers.expect("an error reply");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "400"
    );
    order("eu").await;
    tokio::time::timeout(WAIT, hold.next())
        .await
        .expect("the previous rule still acts")
        .unwrap();
    let listed = client
        .request("sys.coord.rules.list", "".into())
        .await
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.payload).unwrap();
    assert_eq!(
        listed["shipping"]["actions"][0]["publish"]["subject"],
        "cmd.hold"
    );
    assert!(listed.get("unhealthy-instances").is_some(), "{listed}");
    coordinator.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_action_opens_the_gateways_breaker_and_the_fallback_answers() {
    let (server, client) = common::provisioned().await;
    put_policy(
        &client,
        "echo",
        json!({"breaker": {"open_ms": 60000}, "fallback": [{"static": {"text": "later"}}]}),
    )
    .await;
    let coordinator = common::supervise(
        &server,
        Box::new(CoordinatorComponent::new(Duration::from_secs(1))),
    )
    .await;
    let gateway = common::supervise(
        &server,
        Box::new(switchyard::integration::gateway::GatewayComponent::new(
            switchyard::config::GatewayConfig {
                http: "127.0.0.1:0".parse().unwrap(),
                timeout: Duration::from_secs(5),
                ..Default::default()
            },
        )),
    )
    .await;
    let echo = switchyard::demo::echo::service()
        .unwrap()
        .start(&server.client().await)
        .await
        .unwrap();
    let call = || async {
        client
            .request("api.echo.say", json!({"text": "hi"}).to_string().into())
            .await
            .unwrap()
    };
    let fallback = |reply: &async_nats::Message| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Switchyard-Fallback"))
            .map(|v| v.as_str().to_string())
    };
    let reply = call().await;
    assert_eq!(fallback(&reply), None, "the service answers itself first");

    // A rule: when an order event says its service is failing, open the breaker.
    let rule = json!({"on": "ops.failing", "actions": [{"open_breaker": {}}]});
    let stored = client
        .request("sys.coord.rules.put.trip", rule.to_string().into())
        .await
        .unwrap();
    assert!(
        stored
            .headers
            .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none())
    );
    let js = async_nats::jetstream::new(client.clone());
    let mut actions = client
        .subscribe("events.sys.action.open_breaker")
        .await
        .unwrap();
    for _ in 0..60 {
        let meta = switchyard::envelope::Meta::new("urn:test", "io.test.failing")
            .with_content_type(switchyard::envelope::ContentType::Json);
        switchyard::envelope::publish_durable(
            &js,
            &client,
            "events.ops.failing".into(),
            &switchyard::envelope::Envelope::new(meta, json!({"service": "echo"})),
        )
        .await
        .unwrap();
        if tokio::time::timeout(Duration::from_millis(500), actions.next())
            .await
            .is_ok()
        {
            break;
        }
    }
    // Open: the service is not called, the static fallback answers and says so.
    let reply = common::until("the breaker is open", WAIT, || async {
        let reply = call().await;
        fallback(&reply).is_some().then_some(reply)
    })
    .await;
    assert_eq!(fallback(&reply).as_deref(), Some("static"));
    let body: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["text"], "later");
    echo.stop().await;
    gateway.stop(Duration::from_secs(5)).await;
    coordinator.stop(Duration::from_secs(5)).await;
}

/// Requests `$SRV.STATS` counted for one instance so far.
async fn served(client: &Client, instance: &str) -> u64 {
    let reply = client
        .request(format!("$SRV.STATS.echo.{instance}"), "".into())
        .await
        .unwrap();
    let stats: Value = serde_json::from_slice(&reply.payload).unwrap();
    stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["num_requests"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_and_degraded_instances_leave_the_queue_group_while_a_healthy_one_serves() {
    use switchyard::system::health::checker::set_health;
    let (server, client) = common::provisioned().await;
    let js = async_nats::jetstream::new(client.clone());
    let registry = js.get_key_value("registry").await.unwrap();
    let start = || async {
        switchyard::demo::echo::service()
            .unwrap()
            .start(&server.client().await)
            .await
            .unwrap()
    };
    let (a, b) = (start().await, start().await);
    let key_a = a.entry().unwrap().key().unwrap();
    let key_b = b.entry().unwrap().key().unwrap();
    // Sends 40 calls; how many reached A and B.
    let split = || async {
        let before = (served(&client, a.id()).await, served(&client, b.id()).await);
        for _ in 0..40 {
            client
                .request("svc.echo.say", "\"hi\"".into())
                .await
                .unwrap();
        }
        (
            served(&client, a.id()).await - before.0,
            served(&client, b.id()).await - before.1,
        )
    };

    // Draining A: every call goes to B once A has seen its entry change.
    set_health(&js, &registry, &key_a, Health::Draining)
        .await
        .unwrap();
    common::until("A leaves the group", WAIT, || async {
        (split().await == (0, 40)).then_some(())
    })
    .await;
    // Healthy again: A rejoins and takes a share.
    set_health(&js, &registry, &key_a, Health::Healthy)
        .await
        .unwrap();
    common::until("A rejoins", WAIT, || async {
        (split().await.0 > 0).then_some(())
    })
    .await;
    // Degraded A with a healthy B: B serves alone. Both degraded: both serve.
    set_health(&js, &registry, &key_a, Health::Degraded)
        .await
        .unwrap();
    common::until("degraded A serves last", WAIT, || async {
        (split().await == (0, 40)).then_some(())
    })
    .await;
    set_health(&js, &registry, &key_b, Health::Degraded)
        .await
        .unwrap();
    common::until(
        "with no healthy peer, degraded A serves again",
        WAIT,
        || async {
            let (to_a, to_b) = split().await;
            (to_a > 0 && to_b > 0).then_some(())
        },
    )
    .await;
    a.stop().await;
    b.stop().await;
}
