//! Reference figures from `nats bench` (natscli v0.5.0) against the same server, so the
//! Rust baselines can be compared with the NATS project's own tool. Bounded by message
//! count and by a timeout; a missing or failing CLI is reported, never fatal.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::Client;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::process::{Child, Command};

use super::Names;
use crate::nats::embedded::find_tool;

/// Longest any single `nats bench` run may take before it is killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `nats bench service serve` gets to start answering.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Number of reference runs, for the progress bar.
pub const RUNS: u64 = 4;

#[derive(Debug, Clone, Default, Serialize)]
pub struct CliReference {
    pub available: bool,
    pub binary: Option<String>,
    pub version: Option<String>,
    /// Why the reference is missing or partial, if it is.
    pub note: Option<String>,
    pub runs: Vec<CliRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CliRun {
    pub name: String,
    pub command: String,
    /// The summary lines `nats bench` printed (per-client lines left out).
    pub summary: Vec<String>,
    pub error: Option<String>,
}

impl CliReference {
    pub fn skipped(note: &str) -> CliReference {
        CliReference {
            note: Some(note.to_string()),
            ..CliReference::default()
        }
    }
}

/// Runs core request-reply (1 and 64 clients) and JetStream synchronous publish (1 and
/// 64 clients), 128 B, against `url`. `client` checks that the CLI's service answers.
pub async fn reference(
    url: &str,
    client: &Client,
    names: &Names,
    progress: &ProgressBar,
) -> CliReference {
    let binary = match find_tool("nats", None) {
        Ok(binary) => binary,
        Err(e) => {
            progress.inc(RUNS);
            return CliReference::skipped(&format!(
                "nats CLI not available ({}); no reference figures",
                e.message()
            ));
        }
    };
    let mut reference = CliReference {
        available: true,
        binary: Some(binary.display().to_string()),
        version: version(&binary).await,
        ..CliReference::default()
    };
    let base = ["-s", url, "--no-context", "bench"].map(String::from);
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };

    progress.set_message("nats bench service (reference)");
    let serve_args = with(&["service", "serve", &names.cli_service, "--no-progress"]);
    let serve = match start_serve(&binary, &serve_args, client, &names.cli_service).await {
        Ok(child) => Some(child),
        Err(e) => {
            reference.note = Some(format!("nats bench service serve: {e}"));
            None
        }
    };
    for (clients, msgs) in [("1", "20000"), ("64", "64000")] {
        let args = with(&[
            "service",
            "request",
            &names.cli_service,
            "--clients",
            clients,
            "--msgs",
            msgs,
            "--size",
            "128B",
            "--no-progress",
        ]);
        let name = format!("core request-reply, 128 B, {clients} client(s), {msgs} msgs");
        let run = if serve.is_some() {
            run_bounded(&binary, &name, args).await
        } else {
            skipped_run(&binary, &name, args, "service did not start")
        };
        reference.runs.push(run);
        progress.inc(1);
    }
    if let Some(mut child) = serve {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }

    progress.set_message("nats bench js pub (reference)");
    for (clients, msgs) in [("1", "20000"), ("64", "64000")] {
        let args = with(&[
            "js",
            "pub",
            "sync",
            &names.cli_js_subject,
            "--create",
            "--stream",
            &names.cli_stream,
            "--storage",
            "file",
            "--clients",
            clients,
            "--msgs",
            msgs,
            "--size",
            "128B",
            "--no-progress",
        ]);
        let name = format!("JetStream sync publish, 128 B, {clients} client(s), {msgs} msgs");
        reference.runs.push(run_bounded(&binary, &name, args).await);
        progress.inc(1);
    }
    reference
}

fn display(binary: &Path, args: &[String]) -> String {
    let name = binary.file_name().map_or_else(
        || binary.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    std::iter::once(name)
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn skipped_run(binary: &Path, name: &str, args: Vec<String>, why: &str) -> CliRun {
    CliRun {
        name: name.to_string(),
        command: display(binary, &args),
        summary: Vec::new(),
        error: Some(why.to_string()),
    }
}

fn command(binary: &Path, args: &[String]) -> Command {
    let mut command = Command::new(binary);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the child's own state; the
    // child gets SIGTERM if Switchyard dies without killing it.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
}

async fn version(binary: &Path) -> Option<String> {
    let out = command(binary, &["--version".to_string()])
        .output()
        .await
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text.trim().to_string()).filter(|v| !v.is_empty())
}

/// Starts `nats bench service serve` and waits until it answers a request.
async fn start_serve(
    binary: &Path,
    args: &[String],
    client: &Client,
    subject: &str,
) -> Result<Child, String> {
    let mut child = command(binary, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let deadline = Instant::now() + SERVE_READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited at start ({status})"));
        }
        let ask = client.request(subject.to_string(), bytes::Bytes::from_static(b"ping"));
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), ask).await {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    Err(format!("not answering within {SERVE_READY_TIMEOUT:?}"))
}

/// Runs one `nats bench` command to completion (or [`RUN_TIMEOUT`]).
async fn run_bounded(binary: &Path, name: &str, args: Vec<String>) -> CliRun {
    let mut run = CliRun {
        name: name.to_string(),
        command: display(binary, &args),
        summary: Vec::new(),
        error: None,
    };
    let child = command(binary, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => {
            run.error = Some(format!("cannot start {}: {e}", binary.display()));
            return run;
        }
    };
    // On timeout the child is dropped, and kill_on_drop kills it.
    match tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output()).await {
        Err(_) => run.error = Some(format!("killed after {RUN_TIMEOUT:?}")),
        Ok(Err(e)) => run.error = Some(format!("failed: {e}")),
        Ok(Ok(out)) => {
            run.summary = summary_lines(&String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
                run.error = Some(format!("{}: {}", out.status, last.unwrap_or("").trim()));
            }
        }
    }
    run
}

/// The summary lines of `nats bench` output: non-empty, without the per-client
/// `[n] ...` lines printed when there are several clients.
pub fn summary_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('['))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_keeps_aggregates_and_drops_per_client_lines() {
        let out = "\n  [1] 5,235 msgs/sec ~ 654 KiB/sec ~ P50: 175.26us (5,000 msgs)\n  \
                   [2] 5,228 msgs/sec ~ 654 KiB/sec (5,000 msgs)\n\n \
                   NATS Core NATS service requester aggregated stats: 20,794 msgs/sec ~ 2.5 MiB/sec\n \
                   message rates min 5,199 | avg 5,220 | max 5,235 | stddev 13 msgs\n";
        assert_eq!(
            summary_lines(out),
            vec![
                "NATS Core NATS service requester aggregated stats: 20,794 msgs/sec ~ 2.5 MiB/sec",
                "message rates min 5,199 | avg 5,220 | max 5,235 | stddev 13 msgs",
            ]
        );
    }
}
