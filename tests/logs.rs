//! The log manager on a real nats-server, with the real binary: logs are published to
//! `logs.<level>.<component>` and kept in stream LOGS, `switchyard logs` reads them, and
//! `switchyard log-level` changes every instance's filter at runtime (an invalid filter
//! is refused and the one in force stays).

mod common;

use std::time::Duration;

use common::{Process, free_addr};
use futures::StreamExt;

const WAIT: Duration = Duration::from_secs(20);

fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--nats", url]);
    common::run_to_end(&all, &std::env::temp_dir())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_kept_on_nats_and_levels_change_at_runtime() {
    let (server, client) = common::provisioned().await;
    let url = server.url();
    let spawn = || {
        let admin = free_addr().to_string();
        Process::spawn(
            &[
                "run",
                "instance",
                "coordinator",
                "--nats",
                &url,
                "--admin",
                &admin,
                "--log",
                "info",
            ],
            &std::env::temp_dir(),
        )
    };
    let (_one, _two) = (spawn(), spawn());
    common::until("both instances answer", WAIT, || async {
        let (code, out, _) = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || cli(&url, &["log-level"]))
                .await
                .unwrap()
        };
        (code == 0 && out.lines().count() == 2).then_some(())
    })
    .await;

    // An info record of the coordinator (one of them leads), on NATS and in the stream.
    let (code, out, err) = common::until("the leader's log in LOGS", WAIT, || async {
        let url = url.clone();
        let run = tokio::task::spawn_blocking(move || {
            cli(
                &url,
                &["logs", "--component", "coordinator", "--level", "info"],
            )
        })
        .await
        .unwrap();
        run.1.contains("leading the coordinators").then_some(run)
    })
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" info  coordinator: "), "{out}");

    // Debug is off: a malformed request to sys.echo logs nothing at debug…
    let mut debug = client.subscribe("logs.debug.>").await.unwrap();
    client.request("sys.echo", "{nope".into()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), debug.next())
            .await
            .is_err(),
        "no debug records while the filter is info"
    );
    // …until the filter changes on every instance at once.
    let (code, out, err) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || cli(&url, &["log-level", "component=debug,info"]))
            .await
            .unwrap()
    };
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("component=debug,info").count(), 2, "{out}");
    client.request("sys.echo", "{nope".into()).await.unwrap();
    let record = tokio::time::timeout(WAIT, debug.next())
        .await
        .expect("a debug record after the change")
        .unwrap();
    assert_eq!(record.subject.as_str(), "logs.debug.component");
    let body: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(body["message"], "answered with an error");
    assert_eq!(body["fields"]["code"], "400");

    // An invalid filter is refused with the reason, and the one in force stays.
    let (code, _, err) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || cli(&url, &["log-level", "sync=loud"]))
            .await
            .unwrap()
    };
    assert_ne!(code, 0);
    assert!(err.contains("invalid log filter"), "{err}");
    let (_, out, _) = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || cli(&url, &["log-level"]))
            .await
            .unwrap()
    };
    assert_eq!(out.matches("component=debug,info").count(), 2, "{out}");
}
