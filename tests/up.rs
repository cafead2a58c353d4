//! `switchyard up` and `run` as users run them: the real binary, its embedded
//! nats-server, the admin endpoint, the `nats` CLI, signals, and clear one-line errors.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::{
    Process, alive, children, eventually, free_addr, http_get, nats_cli, run_to_end,
    run_to_end_with_env,
};

const WAIT: Duration = Duration::from_secs(30);

fn wait_ready(admin: SocketAddr, process: &mut Process) {
    let ready = eventually(WAIT, || {
        if let Some(code) = process.wait(Duration::ZERO) {
            panic!("switchyard exited early with {code}");
        }
        http_get(admin, "/readyz").filter(|(status, _)| *status == 200)
    });
    assert!(ready.is_some(), "/readyz never answered 200");
}

fn up_in(dir: &std::path::Path, nats: SocketAddr, admin: SocketAddr) -> Process {
    Process::spawn(
        &[
            "up",
            "--nats-listen",
            &nats.to_string(),
            "--admin",
            &admin.to_string(),
            "--http",
            &free_addr().to_string(),
            "--data-dir",
            &dir.join("state").to_string_lossy(),
            "--grace",
            "5s",
        ],
        dir,
    )
}

#[test]
fn up_serves_everything_and_stops_cleanly_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // Run from an empty directory: the built-in copy of nats/dev.conf is used.
        let dir = tempfile::tempdir().unwrap();
        let (nats, admin) = (free_addr(), free_addr());
        let mut up = up_in(dir.path(), nats, admin);
        wait_ready(admin, &mut up);
        let url = format!("nats://{nats}");

        let banner = up.stdout();
        assert!(banner.contains(&url), "{banner}");
        assert!(banner.contains(&format!("http://{admin}")), "{banner}");
        assert!(banner.contains("nats -s"), "{banner}");

        let streams = nats_cli(&url, &["stream", "ls", "--names"]);
        for stream in switchyard::subjects::STREAMS {
            assert!(streams.contains(stream.name), "{streams}");
        }
        let buckets = nats_cli(&url, &["kv", "ls", "--names"]);
        for bucket in switchyard::subjects::BUCKETS {
            assert!(buckets.contains(bucket), "{buckets}");
        }
        let echo = nats_cli(&url, &["req", "sys.echo", r#"{"hello":"world"}"#, "--raw"]);
        assert!(echo.contains(r#""data":{"hello":"world"}"#), "{echo}");

        let (status, metrics) = http_get(admin, "/metrics").unwrap();
        assert_eq!(status, 200);
        assert!(
            metrics.contains("# TYPE switchyard_rpc_request_duration_seconds histogram"),
            "{metrics}"
        );
        assert!(
            metrics.contains("switchyard_rpc_request_duration_seconds_bucket{"),
            "{metrics}"
        );
        assert_eq!(http_get(admin, "/healthz").unwrap().0, 200);

        let server_pids = children(up.pid());
        assert_eq!(server_pids.len(), 1, "one nats-server child");
        up.signal(signal);
        assert_eq!(up.wait(WAIT), Some(0), "exit 0 after signal {signal}");
        assert!(
            eventually(Duration::from_secs(5), || (!alive(server_pids[0]))
                .then_some(()))
            .is_some(),
            "nats-server {} left behind",
            server_pids[0]
        );
        assert!(
            dir.path().join("state/jetstream").is_dir(),
            "store under the data dir"
        );
    }
}

#[test]
fn a_restarted_up_keeps_its_data_and_provisioning_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (nats, admin) = (free_addr(), free_addr());
        let mut up = up_in(dir.path(), nats, admin);
        wait_ready(admin, &mut up);
        let url = format!("nats://{nats}");
        nats_cli(
            &url,
            &["kv", "put", "policies", "probe", r#"{"kept":true}"#],
        );
        let value = nats_cli(&url, &["kv", "get", "policies", "probe", "--raw"]);
        assert!(value.contains("kept"));
        up.signal(libc::SIGTERM);
        assert_eq!(up.wait(WAIT), Some(0));
    }
}

#[test]
fn a_busy_port_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let free = free_addr().to_string();
    let http = free_addr().to_string();
    for args in [
        vec![
            "up",
            "--nats-listen",
            busy_addr.as_str(),
            "--admin",
            free.as_str(),
            "--http",
            http.as_str(),
        ],
        vec![
            "up",
            "--nats-listen",
            free.as_str(),
            "--admin",
            busy_addr.as_str(),
            "--http",
            http.as_str(),
        ],
        // The gateway's HTTP port is claimed before the embedded server starts.
        vec![
            "up",
            "--nats-listen",
            free.as_str(),
            "--admin",
            http.as_str(),
            "--http",
            busy_addr.as_str(),
        ],
    ] {
        let (code, _, stderr) = run_to_end(&args, dir.path());
        assert_ne!(code, 0);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("already in use"), "{stderr}");
        assert!(stderr.contains(&busy_addr), "{stderr}");
    }
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    std::fs::write(&file, "admn = \"127.0.0.1:1\"\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    for args in [
        vec!["up", "--admin", "nonsense"],
        vec!["--config", file.as_str(), "up"],
        vec!["up", "--grace", "soon"],
        vec!["run", "no-such-component"],
        vec!["up", "--log-format", "xml"],
    ] {
        let (code, _, stderr) = run_to_end(&args, dir.path());
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn env_vars_stand_in_for_flags() {
    let dir = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("SWITCHYARD_ADMIN", "nonsense"),
        ("SWITCHYARD_GRACE", "soon"),
        ("SWITCHYARD_LOG_FORMAT", "xml"),
        ("NATS_URL", "nats://bad host:-1"),
    ] {
        let (code, _, stderr) = run_to_end_with_env(&["up"], dir.path(), &[(name, value)]);
        assert_eq!(code, 64, "{name}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
    }
    // A busy admin port given by env is reported like the flag's.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let (code, _, stderr) = run_to_end_with_env(
        &["up"],
        dir.path(),
        &[("SWITCHYARD_ADMIN", busy_addr.as_str())],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains(&busy_addr) && stderr.contains("already in use"),
        "{stderr}"
    );
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    let server = common::TestServer::start();
    let (mut run, admin) =
        Process::run_instance_with_args(&server.url(), &["--log-format", "json"]);
    wait_ready(admin, &mut run);
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait(WAIT), Some(0));
    let stderr = run.stderr();
    assert!(stderr.lines().count() >= 2, "{stderr}");
    for line in stderr.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(value["level"].is_string(), "{line}");
    }
}

#[test]
fn run_serves_named_components_on_an_existing_server() {
    let server = common::TestServer::start();
    let (mut run, admin) = Process::run_instance(&server.url());
    wait_ready(admin, &mut run);
    let pong = nats_cli(&server.url(), &["req", "sys.ping", "", "--raw"]);
    assert!(pong.contains(r#""components":["instance"]"#), "{pong}");
    assert!(children(run.pid()).is_empty(), "run starts no nats-server");
    run.signal(libc::SIGTERM);
    assert_eq!(run.wait(WAIT), Some(0));
    // The server was not ours to stop.
    assert!(server.server.pid().is_some_and(alive));
}

#[test]
fn an_old_nats_server_is_refused_with_its_version_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nats-server");
    // What Debian's package answers.
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    let mut permissions = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&fake, permissions).unwrap();
    let (nats, admin) = (free_addr().to_string(), free_addr().to_string());
    let http = free_addr().to_string();
    let (code, _, stderr) = run_to_end(
        &[
            "up",
            "--nats-server",
            &fake.to_string_lossy(),
            "--nats-listen",
            &nats,
            "--admin",
            &admin,
            "--http",
            &http,
        ],
        dir.path(),
    );
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("2.9.10") && stderr.contains("scripts/setup"),
        "{stderr}"
    );
}
