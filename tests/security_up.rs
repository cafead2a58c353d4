//! `switchyard up --secure --demo` as users run it: every component on its own NATS
//! user, the demo services as `services`, clients through the credential files the
//! banner names. Legitimate work (the gateway, the registry, flow and sync, tasks,
//! events, the operator's tools, the `nats` CLI) causes no permissions violation, and no
//! password appears in any log or output.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::ConnectOptions;
use bytes::Bytes;
use futures::StreamExt;

use common::{Process, children, eventually, free_addr, http_get, http_post, run_to_end_with_env};

const WAIT: Duration = Duration::from_secs(30);

/// `NAME=value` lines of a credential file (`export ` prefixes dropped).
fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every password the server got: its environment's `SWITCHYARD_NATS_PASS_*`.
fn server_passwords(up_pid: u32) -> Vec<String> {
    let server = children(up_pid)
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "nats-server")
        })
        .expect("the embedded nats-server");
    let environ = std::fs::read(format!("/proc/{server}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.strip_prefix("SWITCHYARD_NATS_PASS_"))
        .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_string()))
        .collect()
}

/// The `nats` CLI with `args` (credentials included by the caller): stdout and stderr.
fn nats(args: &[&str]) -> (bool, String) {
    let cli =
        switchyard::nats::embedded::find_tool("nats", None).expect("nats CLI (scripts/setup)");
    let output = std::process::Command::new(cli)
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A fresh gateway API key for the HTTP ingress, which `--secure` protects: (the key,
/// the keys file holding its hash).
fn api_key(dir: &Path) -> (String, PathBuf) {
    let (code, text, _) = run_to_end_with_env(&["api-key", "new", "sectest"], dir, &[]);
    assert_eq!(code, 0, "{text}");
    let key = text
        .lines()
        .find(|l| l.starts_with("sy_"))
        .unwrap()
        .to_string();
    let line = text.lines().find(|l| l.starts_with("# sectest ")).unwrap();
    let file = dir.join("keys");
    std::fs::write(&file, line.trim_start_matches("# ")).unwrap();
    (key, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_secure_runs_everything_as_least_privileged_users() {
    let dir = tempfile::tempdir().unwrap();
    let (nats_addr, admin, http) = (free_addr(), free_addr(), free_addr());
    let (key, keys_file) = api_key(dir.path());
    let state = dir.path().join("state");
    let mut up = Process::spawn(
        &[
            "up",
            "--secure",
            "--demo",
            "--nats-listen",
            &nats_addr.to_string(),
            "--admin",
            &admin.to_string(),
            "--http",
            &http.to_string(),
            "--data-dir",
            &state.to_string_lossy(),
            "--api-keys-file",
            &keys_file.to_string_lossy(),
            "--grace",
            "5s",
        ],
        dir.path(),
    );
    let ready = eventually(WAIT, || {
        assert_eq!(up.wait(Duration::ZERO), None, "switchyard exited early");
        http_get(admin, "/readyz").filter(|(status, _)| *status == 200)
    });
    assert!(ready.is_some(), "/readyz never answered 200");
    let url = format!("nats://{nats_addr}");
    let secure_dir = state.join("secure");
    let client_context = secure_dir.join("client.json");
    // Ready comes first; the banner once the demo services run too.
    let banner = eventually(WAIT, || Some(up.stdout()).filter(|b| b.contains("Ctrl-C")));
    let banner = banner.expect("the banner");
    assert!(banner.contains("Secure"), "{banner}");
    assert!(
        banner.contains(&format!("nats --context {}", client_context.display())),
        "{banner}"
    );

    // The credential files: owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secure_dir), 0o700);
        for user in ["client", "operator", "services"] {
            assert_eq!(
                mode(&secure_dir.join(format!("{user}.json"))),
                0o600,
                "{user}"
            );
            assert_eq!(
                mode(&secure_dir.join(format!("{user}.env"))),
                0o600,
                "{user}"
            );
        }
    }
    let client = env_file(&secure_dir.join("client.env"));
    let operator_env = env_file(&secure_dir.join("operator.env"));
    let (user, password) = (&client["NATS_USER"], &client["NATS_PASSWORD"]);
    assert_eq!(user, "client");

    // Without credentials the server refuses; with the client's, the gateway answers.
    let (ok, text) = nats(&["-s", &url, "req", "sys.echo", "{}"]);
    assert!(
        !ok && text.to_lowercase().contains("authorization"),
        "{text}"
    );
    let (ok, text) = nats(&[
        "-s",
        &url,
        "--user",
        user,
        "--password",
        password,
        "req",
        "api.echo.say",
        r#"{"text":"hi"}"#,
        "--raw",
    ]);
    assert!(ok && text.contains(r#""text":"hi""#), "{text}");
    let context = client_context.to_string_lossy().to_string();
    let operator_context = secure_dir
        .join("operator.json")
        .to_string_lossy()
        .to_string();
    let (ok, text) = nats(&[
        "--context",
        &context,
        "req",
        "sys.registry.list",
        "",
        "--raw",
    ]);
    assert!(
        ok && text.contains(r#""echo""#),
        "the demo services registered: {text}"
    );
    let (ok, text) = nats(&[
        "--context",
        &context,
        "req",
        "tasks.submit.slow.wait",
        r#"{"ms":50}"#,
        "--raw",
    ]);
    assert!(ok, "{text}");
    let task: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let id = task["id"].as_str().unwrap().to_string();
    let completed = eventually(WAIT, || {
        let (_, text) = nats(&[
            "--context",
            &context,
            "req",
            &format!("tasks.get.{id}"),
            "",
            "--raw",
        ]);
        text.contains(r#""state":"completed""#).then_some(())
    });
    assert!(completed.is_some(), "task {id} never completed");

    // Flow and sync: the operator puts a rule, a client's record reaches echo and the
    // client reads the confirmation.
    let rule = dir.path().join("rule.json");
    std::fs::write(
        &rule,
        r#"{"name":"orders","match":{"subject":"data.in.orders.>"},"targets":[{"name":"billing","service":"echo","operation":"say"}]}"#,
    )
    .unwrap();
    let as_operator: Vec<(&str, &str)> = operator_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (code, out, err) = run_to_end_with_env(
        &["flows", "put", &rule.to_string_lossy()],
        dir.path(),
        &as_operator,
    );
    assert_eq!(code, 0, "{out}{err}");
    let app = ConnectOptions::with_user_and_password(user.clone(), password.clone())
        .connect(&url)
        .await
        .unwrap();
    let mut confirmations = app.subscribe("data.confirm.orders").await.unwrap();
    switchyard::nats::connect::round_trip(&app).await.unwrap();
    let js = async_nats::jetstream::new(app.clone());
    js.publish(
        "data.in.orders.eu",
        Bytes::from_static(br#"{"order_id":"o-1"}"#),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let confirmation = tokio::time::timeout(WAIT, confirmations.next())
        .await
        .unwrap()
        .unwrap();
    let body = String::from_utf8_lossy(&confirmation.payload);
    assert!(body.contains(r#""status":"confirmed""#), "{body}");

    // Events: the client follows them as they happen (here a coordination rule's action
    // on the client's own event), the operator reads their history with the tools.
    let (ok, text) = nats(&[
        "--context",
        &operator_context,
        "req",
        "sys.coord.rules.put.ship",
        r#"{"on":"orders.*","actions":[{"publish":{"subject":"cmd.ship"}}]}"#,
    ]);
    assert!(ok, "{text}");
    let mut live = app.subscribe("events.sys.action.>").await.unwrap();
    switchyard::nats::connect::round_trip(&app).await.unwrap();
    js.publish("events.orders.created", Bytes::from_static(b"{}"))
        .await
        .unwrap()
        .await
        .unwrap();
    let action = tokio::time::timeout(WAIT, live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(action.subject.as_str(), "events.sys.action.publish");
    let (code, out, err) = run_to_end_with_env(
        &["events", "tail", "--since", "10m", "--no-follow"],
        dir.path(),
        &as_operator,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("io.switchyard.sys.service.registered"),
        "{out}"
    );
    let (code, out, err) = run_to_end_with_env(&["status"], dir.path(), &as_operator);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("echo") && out.contains("leader"), "{out}");

    // HTTP: --secure requires an API key.
    let body = br#"{"text":"hi"}"#;
    let (status, _, _) = http_post(http, "/v1/echo/say", &[], body).unwrap();
    assert_eq!(status, 401);
    let (status, _, answer) =
        http_post(http, "/v1/echo/say", &[("X-Api-Key", &key)], body).unwrap();
    assert_eq!((status, answer.contains("hi")), (200, true), "{answer}");

    let log_path = state.join("nats-server.log");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("Violation"),
        "legitimate work was refused:\n{log}"
    );
    // The client cannot go around the gateway: the CLI reports the server's refusal.
    let (_, text) = nats(&[
        "--context",
        &context,
        "req",
        "svc.echo.say",
        "{}",
        "--timeout",
        "2s",
    ]);
    assert!(
        text.contains(r#"Permissions Violation for Publish to "svc.echo.say""#),
        "{text}"
    );
    let refused = eventually(WAIT, || {
        let log = std::fs::read_to_string(&log_path).unwrap();
        log.contains(r#"user:client" - Publish Violation - Subject "svc.echo.say""#)
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "the server did not refuse svc.echo.say to the client"
    );

    let passwords = server_passwords(up.pid());
    assert_eq!(passwords.len(), switchyard::app::catalog().len() + 5);
    assert!(passwords.contains(password));
    up.signal(libc::SIGTERM);
    assert_eq!(up.wait(WAIT), Some(0), "graceful stop");
    let outputs = [
        (
            "nats-server.log",
            std::fs::read_to_string(&log_path).unwrap(),
        ),
        (
            "nats-secure.conf",
            std::fs::read_to_string(secure_dir.join("nats-secure.conf")).unwrap(),
        ),
        ("switchyard stdout", up.stdout()),
        ("switchyard stderr", up.stderr()),
    ];
    for (name, text) in &outputs {
        assert!(!text.is_empty(), "{name} is empty");
        for secret in &passwords {
            assert!(!text.contains(secret.as_str()), "a password in {name}");
        }
    }
    println!(
        "security_up: {} passwords, none in {} outputs ({} bytes)",
        passwords.len(),
        outputs.len(),
        outputs.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
}
