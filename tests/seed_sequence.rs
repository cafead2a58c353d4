//! The seed's component-integration sequence with real processes: a client calls the
//! API gateway, which looks the service up in the registry and forwards to a service
//! built with the SDK; the answer comes back the same way, over NATS and over HTTP.
//! Then the service instances are killed with SIGKILL: the gateway stops routing to
//! them and answers 503 at once instead of letting callers time out.

mod common;

use std::time::Duration;

use common::{
    Process, echo_binary, eventually, free_addr, http_get, http_post, nats_cli, try_nats_cli,
};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn client_gateway_registry_service_and_back_then_instances_die() {
    let server = common::TestServer::start();
    let url = server.url();
    let (admin, http) = (free_addr().to_string(), free_addr().to_string());
    let switchyard = Process::spawn(
        &[
            "run", "instance", "registry", "gateway", "--nats", &url, "--admin", &admin, "--http",
            &http,
        ],
        &std::env::temp_dir(),
    );
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    let http: std::net::SocketAddr = http.parse().unwrap();
    eventually(WAIT, || {
        http_get(admin, "/readyz").filter(|(s, _)| *s == 200)
    })
    .expect("ready");

    let binary = echo_binary();
    let echo_args = ["--nats", url.as_str(), "--heartbeat", "1s"];
    let mut first = Process::spawn_program(&binary, &echo_args, &std::env::temp_dir());
    let mut second = Process::spawn_program(&binary, &echo_args, &std::env::temp_dir());

    // Both instances registered: the registry lists them.
    eventually(WAIT, || {
        let listed = try_nats_cli(&url, &["req", "sys.registry.get.echo", "", "--raw"]).ok()?;
        let listed: serde_json::Value = serde_json::from_str(listed.trim()).ok()?;
        (listed.as_array()?.len() == 2).then_some(())
    })
    .expect("two echo instances registered");

    // Over NATS, with the CLI a user has.
    let reply = nats_cli(&url, &["req", "api.echo.say", r#"{"text":"hi"}"#, "--raw"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(reply.trim()).unwrap()["text"],
        "hi"
    );
    let listed = nats_cli(&url, &["micro", "ls"]);
    assert!(listed.contains("echo"), "{listed}");

    // Over HTTP.
    let (status, _, body) = http_post(http, "/v1/echo/say", &[], br#"{"text":"hi"}"#).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["text"],
        "hi"
    );
    let (status, services) = http_get(http, "/v1/services").unwrap();
    assert_eq!(status, 200);
    assert!(services.contains("\"echo\""), "{services}");

    // One instance dies: the other keeps answering, and the dead one leaves the registry.
    first.signal(libc::SIGKILL);
    let _ = first.wait(WAIT);
    for _ in 0..20 {
        let reply = try_nats_cli(&url, &["req", "api.echo.say", r#"{"n":1}"#, "--raw"]);
        assert!(
            reply.is_ok(),
            "a request failed while one instance was still alive: {reply:?}"
        );
    }
    eventually(WAIT, || {
        let listed = try_nats_cli(&url, &["req", "sys.registry.get.echo", "", "--raw"]).ok()?;
        let listed: serde_json::Value = serde_json::from_str(listed.trim()).ok()?;
        (listed.as_array()?.len() == 1).then_some(())
    })
    .expect("the killed instance expired");

    // The last one dies: callers get 503 from the gateway, never a timeout.
    second.signal(libc::SIGKILL);
    let _ = second.wait(WAIT);
    // Once the server has dropped the dead process's subscriptions (a request sent in
    // the instant before can only time out: the server routed it to the dying socket).
    let nats = switchyard::nats::embedded::find_tool("nats", None).unwrap();
    eventually(WAIT, || {
        let output = std::process::Command::new(&nats)
            .args(["-s", &url, "req", "svc.echo.say", "{}", "--timeout", "1s"])
            .output()
            .ok()?;
        // `nats req` reports "No responders are available" on stderr.
        String::from_utf8_lossy(&output.stderr)
            .contains("No responders")
            .then_some(())
    })
    .expect("the server notices the process is gone");
    let (status, _, body) = eventually(WAIT, || {
        http_post(
            http,
            "/v1/echo/say",
            &[("X-Request-Timeout", "20000")],
            b"{}",
        )
        .filter(|(status, _, _)| *status != 200)
    })
    .expect("an error once nothing is left");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("echo"), "{body}");
    drop(switchyard);
}
