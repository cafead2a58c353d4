//! API keys on the gateway's HTTP ingress, end to end: the real binary (`switchyard run
//! gateway`, configured by a TOML file and a keys file made with `switchyard api-key
//! new`), a real nats-server and the echo example service. Without a known key every
//! route answers 401 and nothing reaches NATS; a key over its rate gets 429 with
//! `Retry-After` and the service sees only the calls let through; the key's name (never
//! the key) is forwarded, counted and logged; bad key settings are refused at start.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Process, free_addr, run_to_end, run_to_end_with_env};
use futures::StreamExt;
use serde_json::Value;
use switchyard::config::EXIT_CONFIG;

const WAIT: Duration = Duration::from_secs(30);

/// One HTTP/1.0 request: (status, lower-cased head, body).
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    try_send(addr, method, path, headers).expect("an HTTP answer")
}

/// [`send`], `None` when nothing answers.
fn try_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String, String)> {
    let body = if method == "POST" {
        r#"{"text":"hi"}"#
    } else {
        ""
    };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(WAIT)).ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if method == "POST" {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

/// A request to make: method, path, headers.
type Call<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

fn say(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, String, String) {
    send(addr, "POST", "/v1/echo/say", headers)
}

/// `switchyard api-key new <name> [args]`: (the key, the whole output).
fn new_key(name: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["api-key", "new", name];
    all.extend_from_slice(args);
    let (code, out, err) = run_to_end(&all, &std::env::temp_dir());
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .find(|l| l.starts_with("sy_"))
        .expect("the key line")
        .to_string();
    (key, out)
}

/// Requests the echo service answered so far, from its NATS micro STATS.
async fn echo_calls(client: &async_nats::Client) -> u64 {
    let reply = client
        .request("$SRV.STATS.echo", "".into())
        .await
        .expect("echo STATS");
    let stats: Value = serde_json::from_slice(&reply.payload).unwrap();
    stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["num_requests"].as_u64().unwrap())
        .sum()
}

/// Every request that reaches a service or the tasks component, with the key name it
/// carries.
type Seen = Arc<Mutex<Vec<Option<String>>>>;

async fn watch_forwards(client: &async_nats::Client) -> Seen {
    let seen = Seen::default();
    for subject in ["svc.>", "tasks.submit.>", "tasks.get.>"] {
        let mut sub = client.subscribe(subject).await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                let name = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Switchyard-Api-Key-Name"))
                    .map(|v| v.to_string());
                seen.lock().unwrap().push(name);
            }
        });
    }
    switchyard::nats::connect::round_trip(client).await.unwrap();
    seen
}

/// The text without terminal colour sequences (`ESC [ … m`).
fn without_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

fn metric(text: &str, reason: &str, key: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("switchyard_gateway_http_rejected_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter(|l| l.contains(&format!("key=\"{key}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_ingress_requires_a_key_limits_its_rate_and_never_logs_it() {
    let (server, client) = common::provisioned().await;
    let echo = switchyard::demo::echo::service()
        .unwrap()
        .start(&server.client().await)
        .await
        .unwrap();

    // Two keys, made as an operator would: `ci` in the TOML file (1 per second, burst
    // 3), `ops` in the keys file (fast enough never to be limited here).
    let (ci, ci_out) = new_key("ci", &["--rate", "1", "--burst", "3"]);
    let (ops, ops_out) = new_key("ops", &["--rate", "1000"]);
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let ops_line = ops_out
        .lines()
        .find_map(|l| l.strip_prefix("# ops "))
        .expect("the keys-file line");
    std::fs::write(&keys_file, format!("# rotated by hand\nops {ops_line}\n")).unwrap();
    let toml_entry: String = ci_out
        .lines()
        .skip_while(|l| !l.starts_with("[[gateway.api_keys]]"))
        .take_while(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nrequire_api_key = true\napi_keys_file = {:?}\n\n{toml_entry}",
            keys_file.display().to_string()
        ),
    )
    .unwrap();
    assert!(!std::fs::read_to_string(&config).unwrap().contains(&ci));

    let (http, admin, url) = (free_addr(), free_addr(), server.url());
    let (http_s, admin_s, config_s) = (
        http.to_string(),
        admin.to_string(),
        config.display().to_string(),
    );
    let gateway = Process::spawn(
        &[
            "run", "gateway", "--nats", &url, "--http", &http_s, "--admin", &admin_s, "--config",
            &config_s, "--log", "trace",
        ],
        &std::env::temp_dir(),
    );
    let ops_header = [("X-Api-Key", ops.as_str())];
    let (status, _, body) = common::eventually(WAIT, || {
        let answer = try_send(http, "POST", "/v1/echo/say", &ops_header)?;
        (answer.0 == 200).then_some(answer)
    })
    .expect("the gateway answers with the ops key");
    assert_eq!((status, body.as_str()), (200, r#"{"text":"hi"}"#));

    // Without a known key: 401 on every route, nothing forwarded.
    let seen = watch_forwards(&client).await;
    let before = echo_calls(&client).await;
    let wrong = "sy_not-a-key-5b1f0e7d2c9a4f6b8e3d1c0a9b8f7e6d";
    let bearer_wrong = format!("Bearer {wrong}");
    let refused: Vec<Call> = vec![
        ("POST", "/v1/echo/say", vec![]),
        (
            "POST",
            "/v1/echo/say",
            vec![("Authorization", bearer_wrong.as_str())],
        ),
        ("POST", "/v1/echo/say", vec![("X-Api-Key", wrong)]),
        (
            "POST",
            "/v1/echo/say",
            vec![("Authorization", "Basic b3BzOm9wcw==")],
        ),
        (
            "POST",
            "/v1/echo/say",
            vec![("Switchyard-Api-Key-Name", "ci")],
        ),
        ("GET", "/v1/services", vec![]),
        ("POST", "/v1/tasks/echo/say", vec![]),
        (
            "GET",
            "/v1/tasks/0190c4b6-0000-7000-8000-000000000000",
            vec![],
        ),
        ("GET", "/nowhere", vec![]),
    ];
    for (method, path, headers) in &refused {
        let (status, head, body) = send(http, method, path, headers);
        assert_eq!(status, 401, "{method} {path} {headers:?}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], 401);
        assert_eq!(body["error"]["kind"], "unauthenticated");
    }
    let (_, head, _) = say(http, &[("X-Api-Key", wrong)]);
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    let unauthenticated = refused.len() as u64 + 1;

    // With the ci key, by both headers; then past its rate: 429 with Retry-After.
    let bearer_ci = format!("Bearer {ci}");
    let (status, _, body) = say(http, &[("Authorization", bearer_ci.as_str())]);
    assert_eq!((status, body.as_str()), (200, r#"{"text":"hi"}"#));
    let started = Instant::now();
    let (mut ok, mut limited) = (1u64, None);
    for _ in 0..50 {
        let (status, head, body) = say(http, &[("X-Api-Key", ci.as_str())]);
        match status {
            200 => ok += 1,
            429 => {
                limited = Some((head, body));
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let elapsed = started.elapsed();
    let (head, body) = limited.expect("a 429 within 50 requests at 1 per second");
    let retry_after: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            body["error"]["code"].as_u64(),
            body["error"]["kind"].as_str()
        ),
        (Some(429), Some("overloaded"))
    );
    // The token bucket's own bound: the burst, plus one per second that passed.
    let allowed = 3 + elapsed.as_secs_f64().ceil() as u64;
    assert!(ok <= allowed, "{ok} let through in {elapsed:?}");
    eprintln!(
        "ci key (rate 1/s, burst 3): {ok} answered 200, then 429 (Retry-After {retry_after} s) after {elapsed:?}"
    );

    // The service saw exactly the calls let through, each named `ci`; a caller's own
    // `Switchyard-Api-Key-Name` is replaced by the real one.
    let (status, _, _) = say(
        http,
        &[
            ("X-Api-Key", ops.as_str()),
            ("Switchyard-Api-Key-Name", "ci"),
        ],
    );
    assert_eq!(status, 200);
    let expected = ok + 1;
    let forwarded = common::until("the forwards are seen", WAIT, || async {
        let seen = seen.lock().unwrap().clone();
        (seen.len() as u64 >= expected).then_some(seen)
    })
    .await;
    common::until("the echo service's count", WAIT, || async {
        (echo_calls(&client).await - before >= expected).then_some(())
    })
    .await;
    // Settled: the service answered them all; nothing else came.
    assert_eq!(seen.lock().unwrap().len() as u64, expected, "{forwarded:?}");
    let mut names: Vec<Option<String>> = forwarded;
    let last = names.pop().unwrap();
    assert_eq!(last.as_deref(), Some("ops"));
    assert!(
        names.iter().all(|n| n.as_deref() == Some("ci")),
        "{names:?}"
    );
    assert_eq!(echo_calls(&client).await - before, expected);

    // Counted by reason and key name.
    let (_, metrics) = common::http_get(admin, "/metrics").expect("metrics");
    assert_eq!(metric(&metrics, "unauthenticated", "-"), unauthenticated);
    assert_eq!(metric(&metrics, "rate_limited", "ci"), 1);
    assert!(!metrics.contains(&ci) && !metrics.contains(&ops));

    // Nothing logged the keys, at trace level, on stderr/stdout or on NATS (stream
    // LOGS); the refusals were logged, by key name.
    let output = without_ansi(&format!("{}{}", gateway.stdout(), gateway.stderr()));
    assert!(output.contains("TRACE"), "trace logging is on");
    assert!(output.contains("api_key=ci"), "the key's name is logged");
    assert!(
        !output
            .to_ascii_lowercase()
            .contains("authorization: bearer")
    );
    for secret in [ci.as_str(), ops.as_str(), wrong] {
        assert!(!output.contains(secret), "a key is in the logs");
        assert!(!output.contains(&secret[3..]), "a key is in the logs");
    }
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("LOGS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    assert!(pending > 0, "the gateway's logs reach stream LOGS");
    let mut messages = consumer.messages().await.unwrap().take(pending);
    while let Some(Ok(message)) = messages.next().await {
        let text = String::from_utf8_lossy(&message.payload);
        for secret in [ci.as_str(), ops.as_str(), wrong] {
            assert!(!text.contains(&secret[3..]), "a key is in stream LOGS");
        }
    }
    echo.stop().await;
}

#[test]
fn bad_key_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let hash = "0".repeat(64);
    let cases = [
        (
            write("required.toml", "[gateway]\nrequire_api_key = true\n"),
            "api-key new",
        ),
        (
            write(
                "short.toml",
                "[[gateway.api_keys]]\nname = \"ci\"\nsha256 = \"abc123\"\n",
            ),
            "sha256",
        ),
        (
            write(
                "nothex.toml",
                &format!(
                    "[[gateway.api_keys]]\nname = \"ci\"\nsha256 = \"{}\"\n",
                    "z".repeat(64)
                ),
            ),
            "hex",
        ),
        (
            write(
                "twice.toml",
                &format!(
                    "[[gateway.api_keys]]\nname = \"ci\"\nsha256 = \"{hash}\"\n\
                     [[gateway.api_keys]]\nname = \"ci\"\nsha256 = \"{}\"\n",
                    "1".repeat(64)
                ),
            ),
            "same name",
        ),
        (
            {
                let keys = write("keys", &format!("ci {hash}\nops not-a-hash\n"));
                write(
                    "file.toml",
                    &format!("[gateway]\napi_keys_file = {keys:?}\n"),
                )
            },
            "line 2",
        ),
    ];
    for (config, expected) in &cases {
        let (code, _, err) = run_to_end(
            &[
                "run",
                "gateway",
                "--nats",
                "nats://127.0.0.1:1",
                "--config",
                config,
            ],
            dir.path(),
        );
        assert_eq!(code, EXIT_CONFIG, "{config}: {err}");
        assert!(
            err.contains(expected) && err.lines().count() == 1,
            "{config}: {err}"
        );
    }
    // The switch from the flag and from the environment, with no key anywhere.
    let (code, _, err) = run_to_end(
        &[
            "run",
            "gateway",
            "--nats",
            "nats://127.0.0.1:1",
            "--require-api-key",
        ],
        dir.path(),
    );
    assert_eq!(code, EXIT_CONFIG, "{err}");
    let env = [("SWITCHYARD_REQUIRE_API_KEY", "true")];
    let (code, _, err) = run_to_end_with_env(
        &["run", "gateway", "--nats", "nats://127.0.0.1:1"],
        dir.path(),
        &env,
    );
    assert_eq!(code, EXIT_CONFIG, "{err}");
    // Making a key works even then: it is what such a configuration needs.
    let (code, out, err) = run_to_end_with_env(&["api-key", "new", "ci"], dir.path(), &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("sy_")), "{out}");
    let (code, _, err) = run_to_end(&["api-key", "new", "not ok"], dir.path());
    assert_eq!(code, EXIT_CONFIG, "{err}");
}
