//! The Grafana dashboard and the Prometheus alert rules against a real Prometheus
//! (Debian's `prometheus` package, installed by scripts/setup). No Grafana server can
//! run here, so this stands in for one: `switchyard up --demo` under a little load,
//! scraped every second, and every panel's query, with the dashboard's variables
//! substituted as Grafana would, must return data through Prometheus's HTTP API.
//! promtool checks and unit-tests the rules, and Prometheus itself loads them.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use common::{Process, eventually, free_addr, http_get, repo_path, run_to_end, until};

const DASHBOARD: &str = "grafana/dashboards/switchyard-overview.json";
const RULES: &str = "grafana/prometheus/switchyard-alerts.yml";
const RULE_TESTS: &str = "grafana/prometheus/switchyard-alerts.test.yml";
const WAIT: Duration = Duration::from_secs(30);

/// Metrics whose panels cannot return data yet, with the reason; their queries are
/// still run but may come back empty. Empty: every panel must return data.
const NOT_YET: &[(&str, &str)] = &[];

/// A Prometheus tool: missing is a failure (scripts/setup installs it), never a skip.
fn tool(name: &str) -> PathBuf {
    switchyard::nats::embedded::find_tool(name, None).unwrap_or_else(|_| {
        panic!("{name} not found: run scripts/setup (installs Debian's prometheus package)")
    })
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_path(DASHBOARD)).expect("the dashboard JSON");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every panel that is not a row, with its targets' queries.
fn panel_queries(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            let exprs = p["targets"].as_array().map_or_else(Vec::new, |targets| {
                targets
                    .iter()
                    .filter_map(|t| t["expr"].as_str().map(str::to_string))
                    .collect()
            });
            (title, exprs)
        })
        .collect()
}

/// Grafana's substitution of the dashboard's variables: `$service` as the given
/// regex (`.*` is "All"), the interval variables as a scrape-rate-safe window.
fn substitute(expr: &str, service: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${service}", service)
        .replace("$service", service)
}

#[test]
fn the_alert_rules_pass_promtool() {
    let promtool = tool("promtool");
    for args in [
        ["check", "rules", RULES],
        ["test", "rules", RULE_TESTS],
        // The sample configuration users start from, which loads the rules.
        ["check", "config", "grafana/prometheus/prometheus.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(&args[..2])
            .arg(repo_path(args[2]))
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_dashboard_has_a_stable_uid_and_asks_for_its_datasource() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "switchyard-overview");
    assert!(dashboard["schemaVersion"].as_u64() >= Some(36));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(
        (&datasource["type"], &datasource["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    let wanted = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(ids.insert(panel["id"].as_u64()), "duplicate id: {panel}");
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], wanted, "{}", panel["title"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"], wanted, "{}", panel["title"]);
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"], wanted, "{}", variable["name"]);
    }
}

#[test]
fn every_panel_returns_data_from_a_real_prometheus() {
    let (prometheus, promtool) = (tool("prometheus"), tool("promtool"));
    let dir = tempfile::tempdir().unwrap();
    let (nats, admin, http) = (free_addr(), free_addr(), free_addr());
    let mut up = Process::spawn(
        &[
            "up",
            "--demo",
            "--nats-listen",
            &nats.to_string(),
            "--admin",
            &admin.to_string(),
            "--http",
            &http.to_string(),
            "--data-dir",
            &dir.path().join("state").to_string_lossy(),
        ],
        dir.path(),
    );

    // Prometheus scrapes the admin endpoint every second and loads the shipped rules.
    let web = free_addr();
    let config = dir.path().join("prometheus.yml");
    let rules = repo_path(RULES);
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: switchyard\n    static_configs: [{{targets: [\"{admin}\"]}}]\n"
        ),
    )
    .unwrap();
    let check = Command::new(&promtool)
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("run promtool");
    assert!(check.status.success(), "{check:?}");
    let _prometheus = Process::spawn_program(
        &prometheus,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
            &format!("--web.listen-address={web}"),
            "--log.level=warn",
        ],
        dir.path(),
    );

    let ready = eventually(WAIT, || {
        if let Some(code) = up.wait(Duration::ZERO) {
            panic!("switchyard exited early with {code}");
        }
        http_get(admin, "/readyz").filter(|(status, _)| *status == 200)
    });
    assert!(ready.is_some(), "/readyz never answered 200");
    assert!(
        eventually(WAIT, || non_empty(web, "up{job=\"switchyard\"} == 1")).is_some(),
        "Prometheus never scraped switchyard"
    );

    // Load once Prometheus scrapes, and on until the panels are checked, so every
    // rate sees increases.
    let url = format!("nats://{nats}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(setup(&url, dir.path()));
    let load = runtime.spawn(steady_load(url));

    // Every query returns data once the monitor's gauges and a few scrapes are in;
    // polled, so a slow machine only takes longer.
    let dashboard = dashboard();
    let queries = panel_queries(&dashboard);
    let missing = |service: &str| -> Vec<String> {
        let mut missing = Vec::new();
        for (title, exprs) in &queries {
            for expr in exprs {
                if service != ".*" && !expr.contains("$service") {
                    continue;
                }
                let waived = NOT_YET.iter().any(|(metric, _)| expr.contains(metric));
                if !waived && non_empty(web, &substitute(expr, service)).is_none() {
                    missing.push(format!("{title}: {expr} (service {service})"));
                }
            }
        }
        missing
    };
    let mut last = Vec::new();
    let all = eventually(WAIT, || {
        last = [".*", "echo"].iter().flat_map(|s| missing(s)).collect();
        last.is_empty().then_some(())
    });
    assert!(all.is_some(), "panels without data:\n{}", last.join("\n"));
    load.abort();

    // The service variable's values, as Grafana's label_values() asks for them.
    let variable = dashboard["templating"]["list"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "service"))
        .expect("a service variable");
    let definition = variable["definition"].as_str().unwrap();
    let (metric, label) = definition
        .strip_prefix("label_values(")
        .and_then(|d| d.strip_suffix(')'))
        .and_then(|d| d.split_once(", "))
        .expect("label_values(metric, label)");
    let path = format!("/api/v1/label/{label}/values?match[]={metric}");
    let (_, body) = http_get(web, &path).expect("label values");
    let values: Value = serde_json::from_str(&body).unwrap();
    let values = values["data"].as_array().cloned().unwrap_or_default();
    for service in ["echo", "flaky", "slow"] {
        assert!(values.contains(&service.into()), "{values:?}");
    }

    // Prometheus evaluates every shipped rule without error, and the dead letter the
    // load left makes the DLQ alert pending (it fires after a minute).
    let shipped = std::fs::read_to_string(&rules)
        .unwrap()
        .matches("- alert:")
        .count();
    let rules_ok = eventually(WAIT, || {
        let (_, body) = http_get(web, "/api/v1/rules")?;
        let body: Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let healthy = rules.len() == shipped && rules.iter().all(|r| r["health"] == "ok");
        let dlq = rules
            .iter()
            .any(|r| r["name"] == "SwitchyardDlqNotEmpty" && r["state"] != "inactive");
        (healthy && dlq).then_some(())
    });
    assert!(
        rules_ok.is_some(),
        "rules: {:?}",
        http_get(web, "/api/v1/rules")
    );
}

/// `Some` when the instant query returns at least one series with a number (not NaN).
fn non_empty(web: SocketAddr, query: &str) -> Option<()> {
    let path = format!(
        "/api/v1/query?query={}",
        utf8_percent_encode(query, NON_ALPHANUMERIC)
    );
    let (status, body) = http_get(web, &path)?;
    let body: Value = serde_json::from_str(&body).ok()?;
    assert!(
        status == 200 && body["status"] == "success",
        "{query}: {status} {body}"
    );
    let series = body["data"]["result"].as_array()?;
    series
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .any(f64::is_finite)
        .then_some(())
}

/// Calls `subject` with `body` (and a gateway deadline): `Some(error code)` for an
/// error reply, `Some(None)` for a success, `None` without a reply.
async fn call(
    client: &async_nats::Client,
    subject: &str,
    body: &'static str,
    timeout_ms: Option<&str>,
) -> Option<Option<String>> {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(ms) = timeout_ms {
        headers.insert("Switchyard-Timeout-Ms", ms);
    }
    let reply = client
        .request_with_headers(subject.to_string(), headers, body.into())
        .await
        .ok()?;
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"));
    Some(code.map(|c| c.to_string()))
}

/// What happens once: an alert rule that fires on the dead letter, a flow rule with
/// records and a malformed one (the dead letter).
async fn setup(url: &str, dir: &Path) {
    let client = switchyard::nats::connect(url, "grafana-test")
        .await
        .unwrap();
    // The demo services register after the components.
    for subject in ["api.echo.say", "api.flaky.call", "api.slow.wait"] {
        until(&format!("{subject} answers"), WAIT, || async {
            call(&client, subject, "{}", None)
                .await
                .filter(|code| code.as_deref() != Some("503") && code.as_deref() != Some("404"))
        })
        .await;
    }
    let js = async_nats::jetstream::new(client.clone());
    let coord = js.get_key_value("coord").await.unwrap();
    coord
        .put(
            "alerts.grafana-dlq",
            r#"{"condition":{"dlq_depth":{"above":0}},"for":"0s","severity":"warning"}"#.into(),
        )
        .await
        .unwrap();
    let rule = dir.join("rule.json");
    std::fs::write(
        &rule,
        r#"{"name":"grafana-orders","match":{"subject":"data.in.orders.>"},
            "targets":[{"name":"echoer","service":"echo","operation":"say"}],
            "key":{"field":"/id"}}"#,
    )
    .unwrap();
    let (code, _, stderr) = run_to_end(
        &["flows", "put", &rule.to_string_lossy(), "--nats", url],
        dir,
    );
    assert_eq!(code, 0, "{stderr}");
    for record in [r#"{"id":"o-1"}"#, r#"{"id":"o-2"}"#, "not json {"] {
        js.publish("data.in.orders.eu", record.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A little steady load until the test ends, so every rate has increases between
/// scrapes (a counter first scraped with all its load has a rate of 0): gateway calls
/// (retried, failed, timed out), cache reads and writes, a task.
async fn steady_load(url: String) {
    let client = switchyard::nats::connect(&url, "grafana-load")
        .await
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        call(&client, "api.echo.say", r#"{"text":"hi"}"#, None).await;
        call(&client, "api.flaky.call", "{}", None).await;
        // 504: the gateway's deadline is shorter than the wait.
        call(&client, "api.slow.wait", r#"{"ms":300}"#, Some("50")).await;
        call(&client, "cache.put.demo.k1", r#"{"v":1}"#, None).await;
        call(&client, "cache.get.demo.k1", "", None).await;
        call(&client, "cache.get.demo.missing", "", None).await;
        call(
            &client,
            "tasks.submit.echo.say",
            r#"{"text":"later"}"#,
            None,
        )
        .await;
    }
}
