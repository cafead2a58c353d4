//! `switchyard bench` runs end to end on its own server and reports every scenario.
//! Figures are not asserted: the machines are shared and noisy.

mod common;

#[test]
fn bench_reports_every_baseline_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = common::run_to_end(
        &["bench", "--json", "--duration", "200ms", "--no-nats-cli"],
        dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
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
