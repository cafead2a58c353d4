//! `/readyz` follows reality: 200 only while NATS is connected and every stream and
//! bucket exists; 503 with the reason otherwise; and it recovers on its own.

mod common;

use std::time::Duration;

use common::{Process, eventually, http_get};

const WAIT: Duration = Duration::from_secs(30);

fn readyz(admin: std::net::SocketAddr) -> Option<(u16, String)> {
    http_get(admin, "/readyz")
}

#[test]
fn readiness_flips_with_the_server_and_with_missing_streams() {
    let mut server = common::TestServer::start();
    let (_run, admin) = Process::run_instance(&server.url());
    let ok = |status: u16| move |r: Option<(u16, String)>| r.filter(|(s, _)| *s == status);
    eventually(WAIT, || ok(200)(readyz(admin))).expect("ready");

    // Server gone: not ready, and the reason says why.
    server.server.stop(Duration::from_secs(5));
    let (_, reason) = eventually(WAIT, || ok(503)(readyz(admin))).expect("not ready");
    assert!(reason.contains("NATS disconnected"), "{reason}");
    // Alive all the same: liveness is about the process, not its dependencies.
    assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);

    // Server back (same port, same store): ready again without a restart.
    server.server.restart().expect("restart nats-server");
    eventually(WAIT, || ok(200)(readyz(admin))).expect("ready again");

    // A stream deleted under us is noticed and re-created.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = server.client().await;
        let js = async_nats::jetstream::new(client.clone());
        js.delete_stream("EVENTS").await.expect("delete EVENTS");
        js.delete_key_value("coord").await.expect("delete coord");
        client.flush().await.unwrap();
    });
    eventually(WAIT, || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let js = async_nats::jetstream::new(server.client().await);
            let events = js.get_stream("EVENTS").await.is_ok();
            let coord = js.get_key_value("coord").await.is_ok();
            (events && coord).then_some(())
        })
    })
    .expect("EVENTS and coord re-created");
    eventually(WAIT, || ok(200)(readyz(admin))).expect("ready after re-creation");
}
