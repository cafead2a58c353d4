//! `switchyard bench` runs end to end on its own server and reports every scenario.
//! Figures are not asserted: the machines are shared and noisy.

mod common;

/// Runs `switchyard <args>` to the end and parses its one JSON document.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = common::run_to_end(args, dir.path());
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).expect("one JSON document")
}

#[test]
fn bench_reports_every_baseline_as_json() {
    let report = bench_json(&["bench", "--json", "--duration", "200ms", "--no-nats-cli"]);
    let text = report.to_string();
    for scenario in [
        "request-reply",
        "relay",
        "js-publish",
        "js-consume",
        "kv-get",
    ] {
        assert!(
            text.contains(&format!("\"{scenario}\"")),
            "{scenario} missing: {text}"
        );
    }
}

#[test]
fn bench_gateway_reports_three_paths_ratios_and_the_lookup_as_json() {
    let report = bench_json(&[
        "bench",
        "gateway",
        "--json",
        "--duration",
        "200ms",
        "--rounds",
        "2",
    ]);
    assert_eq!(report["suite"], "gateway", "{report}");
    assert_eq!(report["rounds"], 2, "{report}");
    let rows = report["scenarios"].as_array().expect("scenarios");
    // Every path of every cell once per round.
    assert_eq!(rows.len(), 2 * 3 * 4, "{report}");
    for round in [1, 2] {
        assert_eq!(rows.iter().filter(|r| r["round"] == round).count(), 12);
    }
    let per_round = report["round_comparisons"].as_array().expect("per round");
    assert_eq!(per_round.len(), 2 * 4, "{report}");
    let comparisons = report["comparisons"].as_array().expect("comparisons");
    for payload in [128, 1024] {
        for concurrency in [1, 64] {
            let cell = |v: &&serde_json::Value| {
                v["payload_bytes"] == payload && v["concurrency"] == concurrency
            };
            for path in ["direct", "relay", "gateway"] {
                let row = rows
                    .iter()
                    .filter(cell)
                    .find(|r| r["scenario"] == path)
                    .unwrap_or_else(|| panic!("{path} {payload} x{concurrency} missing: {report}"));
                assert!(row["ops"].as_u64().unwrap() > 0, "{row}");
                assert_eq!(row["errors"], 0, "{row}");
                assert!(row["msgs_per_sec"].as_f64().unwrap() > 0.0, "{row}");
            }
            let c = comparisons
                .iter()
                .find(cell)
                .expect("a comparison per cell");
            for ratio in [
                "gateway_vs_relay_throughput",
                "gateway_vs_direct_throughput",
                "relay_vs_direct_throughput",
            ] {
                assert!(c[ratio].as_f64().unwrap() > 0.0, "{ratio}: {c}");
            }
            assert!(c["gateway_p99_over_direct_us"].is_i64(), "{c}");
        }
    }
    let lookup = &report["lookup"];
    assert!(lookup["median_ns"].as_f64().unwrap() > 0.0, "{lookup}");
    assert!(lookup["p99_ns"].as_f64().unwrap() >= lookup["median_ns"].as_f64().unwrap());
    // 4 throughput targets, 2 p99 targets (1 caller), the lookup: verdicts, not asserts.
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 7, "{report}");
    assert!(targets.iter().all(|t| t["met"].is_boolean()), "{report}");
}

#[test]
fn bench_sync_compares_flow_and_sync_with_the_hand_written_pipeline_and_loses_nothing() {
    let report = bench_json(&["bench", "sync", "--json", "--duration", "300ms"]);
    let rows = report["rows"].as_array().expect("rows");
    // The hand-written pipeline, the contract floor, Switchyard.
    assert_eq!(rows.len(), 3, "{report}");
    assert_eq!(rows[1]["path"], "contract floor", "{report}");
    for row in rows {
        assert!(row["records_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        let published = row["published"].as_u64().unwrap();
        assert!(published > 0, "{row}");
        // Arrivals at the target, redeliveries included: fewer would mean a loss.
        assert!(
            row["delivered"].as_u64().unwrap() >= published,
            "lost: {row}"
        );
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
    let hit = &report["cache"]["get_local_hit"];
    assert!(hit["median_ns"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn bench_tasks_compares_durable_tasks_with_the_hand_written_work_queue_and_loses_nothing() {
    let report = bench_json(&["bench", "tasks", "--json", "--duration", "300ms"]);
    let rows = report["rows"].as_array().expect("rows");
    // The hand-written queue, the contract floor, Switchyard.
    assert_eq!(rows.len(), 3, "{report}");
    assert_eq!(rows[1]["path"], "contract floor", "{report}");
    for row in rows {
        assert!(row["tasks_per_sec"].as_f64().unwrap() > 0.0, "{row}");
        let submitted = row["submitted"].as_u64().unwrap();
        assert!(submitted > 0, "{row}");
        // Every accepted task completed; fewer would be a loss.
        assert!(
            row["completed"].as_u64().unwrap() >= submitted,
            "lost: {row}"
        );
        assert!(
            row["p99_us"].as_u64().unwrap() >= row["p50_us"].as_u64().unwrap(),
            "{row}"
        );
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
    // A verdict, not an assertion on timing.
    assert!(report["target_met"].is_boolean(), "{report}");
}

#[test]
fn rounds_are_refused_where_they_mean_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["bench", "gateway", "--rounds", "0"][..],
        &["bench", "sync", "--rounds", "3"][..],
    ] {
        let (code, _, stderr) = common::run_to_end(args, dir.path());
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains("--rounds"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_login_for_the_bench_is_refused_rather_than_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = common::run_to_end_with_env(
        &[
            "bench",
            "--nats",
            "nats://127.0.0.1:4222",
            "--duration",
            "1s",
        ],
        dir.path(),
        &[("NATS_TOKEN", "secret-token")],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("without a NATS login"), "{stderr}");
    assert!(!stderr.contains("secret-token"), "{stderr}");
}
