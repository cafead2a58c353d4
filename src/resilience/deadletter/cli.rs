//! `switchyard dlq ls|show|replay|purge`: read, redrive and remove the dead letters of
//! stream `DLQ` against `--nats`. Every command selects entries the same way: by
//! sequence, or by a pattern on the original subject (`--subject 'orders.*'`, filtered
//! by the server as `dlq.<pattern>`) and the time the entry was stored (`--since 10m`,
//! `--until <RFC 3339>`). `replay` and `purge` refuse to act on everything unless told
//! so (`--subject '>'`).

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::entry::{self, Entry};
use super::filter::Filter;
use super::replay::{Outcome, Replayer};
use crate::cli::{DlqCommand, DlqFilterArgs, DlqPurgeArgs, DlqReplayArgs};
use crate::config::Config;
use crate::envelope::to_display_json;
use crate::error::Error;

/// Longest reason shown in the `ls` table; `show` prints it whole.
const REASON_WIDTH: usize = 60;

/// The command: connect, run, print.
pub async fn run(config: Config, command: DlqCommand) -> Result<(), Error> {
    let client = crate::nats::connect::connect_tool(&config, "dlq").await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = entry::dlq_stream(&js).await?;
    let out = match command {
        DlqCommand::Ls(args) => {
            let filter = parse_filter(&args.filter)?;
            ls(&entry::select(&stream, &filter).await?, args.json)?
        }
        DlqCommand::Show(args) => show(&entry::get(&stream, args.seq).await?, args.json)?,
        DlqCommand::Replay(args) => replay(client, &stream, args).await?,
        DlqCommand::Purge(args) => purge(&stream, args).await?,
    };
    print!("{out}");
    Ok(())
}

fn parse_filter(args: &DlqFilterArgs) -> Result<Filter, Error> {
    Filter::parse(
        args.subject.as_deref(),
        args.since.as_deref(),
        args.until.as_deref(),
        OffsetDateTime::now_utc(),
    )
}

/// The entries `seqs` names, or the filter's; never everything by default.
async fn selected(
    stream: &Stream,
    seqs: &[u64],
    filter: &Filter,
    verb: &str,
) -> Result<Vec<Entry>, Error> {
    if !seqs.is_empty() {
        return entry::by_seqs(stream, seqs, filter).await;
    }
    if filter.is_empty() {
        return Err(Error::invalid_input(format!(
            "name the entries to {verb}: sequences, or --subject/--since/--until \
             (--subject '>' for every entry)"
        )));
    }
    entry::select(stream, filter).await
}

/// `dlq ls`: a table, or with `json` one JSON array.
pub fn ls(entries: &[Entry], json: bool) -> Result<String, Error> {
    if json {
        let items: Vec<_> = entries.iter().map(Entry::summary).collect();
        return pretty(&items);
    }
    if entries.is_empty() {
        return Ok("no dead letters match\n".into());
    }
    let mut rows = vec![
        [
            "SEQ",
            "TIME",
            "ORIGINAL SUBJECT",
            "COMPONENT/CONSUMER",
            "DELIVERIES",
            "REASON",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    for entry in entries {
        let s = entry.summary();
        let by = match (&s.component, s.consumer.as_ref().or(s.target.as_ref())) {
            (Some(component), Some(consumer)) => format!("{component}/{consumer}"),
            (Some(component), None) => component.clone(),
            (None, consumer) => consumer.cloned().unwrap_or_else(|| "-".into()),
        };
        let reason = s.reason.unwrap_or_default();
        rows.push(vec![
            s.seq.to_string(),
            s.time,
            s.original_subject.unwrap_or_else(|| "(gone)".into()),
            by,
            s.deliveries.map_or_else(|| "-".into(), |d| d.to_string()),
            shorten(&reason, REASON_WIDTH),
        ]);
    }
    Ok(crate::cli::text_table(&rows))
}

/// `dlq show <seq>`: the headers, sorted, and the payload as readable JSON.
pub fn show(entry: &Entry, json: bool) -> Result<String, Error> {
    let mut headers: Vec<(String, String)> = entry
        .headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_string()))
        })
        .collect();
    headers.sort();
    let shown = to_display_json(&entry.payload);
    let payload = serde_json::from_slice::<Value>(&shown).ok();
    if json {
        let map: Map<String, Value> = headers
            .iter()
            .map(|(n, v)| (n.clone(), Value::String(v.clone())))
            .collect();
        return pretty(&json!({
            "seq": entry.seq,
            "time": super::rfc3339(entry.stored),
            "subject": entry.subject,
            "headers": map,
            "payload": payload.unwrap_or_else(|| Value::String(String::from_utf8_lossy(&entry.payload).into_owned())),
        }));
    }
    let mut out = format!(
        "DLQ entry {} stored {} on {}\n\nheaders:\n",
        entry.seq,
        super::rfc3339(entry.stored),
        entry.subject
    );
    for (name, value) in &headers {
        out.push_str(&format!("  {name}: {value}\n"));
    }
    let body = match payload.and_then(|p| serde_json::to_string_pretty(&p).ok()) {
        Some(text) => text,
        None if entry.payload.is_empty() => "(empty)".into(),
        None => String::from_utf8_lossy(&entry.payload).into_owned(),
    };
    out.push_str(&format!(
        "\npayload ({} bytes):\n{body}\n",
        entry.payload.len()
    ));
    Ok(out)
}

/// `dlq replay`: each selected entry back to its original subject; a line per entry
/// (or a progress bar on a terminal, with only the failures) and a summary. Fails
/// when any replay failed.
async fn replay(
    client: async_nats::Client,
    stream: &Stream,
    args: DlqReplayArgs,
) -> Result<String, Error> {
    let filter = parse_filter(&args.filter)?;
    let entries = selected(stream, &args.seqs, &filter, "replay").await?;
    let bar = progress_bar(entries.len() as u64);
    let mut replayer = Replayer::new(client);
    let mut tally = Tally::default();
    for entry in &entries {
        let (line, failed) = replay_one(&mut replayer, entry, args.dry_run, &mut tally).await;
        if bar.is_hidden() {
            println!("{line}");
        } else if failed {
            bar.println(line);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let verb = match args.dry_run {
        true => "dry run: would replay",
        false => "replayed",
    };
    let summary = format!(
        "{verb} {}, failed {}, skipped {}\n",
        tally.replayed, tally.failed, tally.skipped
    );
    if tally.failed > 0 {
        print!("{summary}");
        return Err(Error::unavailable(format!(
            "{} of {} replays failed",
            tally.failed,
            entries.len()
        )));
    }
    Ok(summary)
}

#[derive(Debug, Default)]
struct Tally {
    replayed: usize,
    failed: usize,
    skipped: usize,
}

/// Replays one entry (or, dry, says it would): its line, and whether it failed.
async fn replay_one(
    replayer: &mut Replayer,
    entry: &Entry,
    dry_run: bool,
    tally: &mut Tally,
) -> (String, bool) {
    let seq = entry.seq;
    let Some(target) = entry.original_subject() else {
        tally.skipped += 1;
        return (
            format!("skipped DLQ:{seq}: the original was gone, nothing to replay"),
            false,
        );
    };
    if dry_run {
        tally.replayed += 1;
        return (format!("would replay DLQ:{seq} to {target}"), false);
    }
    match replayer.replay(entry).await {
        Ok(Outcome::Replayed { stream }) => {
            tally.replayed += 1;
            let via = stream.map_or_else(|| "core NATS".into(), |s| format!("stream {s}"));
            (format!("replayed DLQ:{seq} to {target} ({via})"), false)
        }
        Ok(Outcome::Skipped(why)) => {
            tally.skipped += 1;
            (format!("skipped DLQ:{seq}: {why}"), false)
        }
        Err(err) => {
            tally.failed += 1;
            (
                format!("failed DLQ:{seq} to {target}: {}", err.message()),
                true,
            )
        }
    }
}

/// `dlq purge`: deletes the selected entries, after confirmation.
async fn purge(stream: &Stream, args: DlqPurgeArgs) -> Result<String, Error> {
    let filter = parse_filter(&args.filter)?;
    let entries = selected(stream, &args.seqs, &filter, "purge").await?;
    if entries.is_empty() {
        return Ok("no dead letters match; nothing purged\n".into());
    }
    confirm(entries.len(), args.yes)?;
    // A subject alone is one server-side purge; anything else goes entry by entry.
    if args.seqs.is_empty() && filter.subject_only() {
        let purged = stream
            .purge()
            .filter(filter.dlq_subject())
            .await
            .map_err(|e| Error::nats("purge stream DLQ", e))?;
        return Ok(format!("purged {} dead letters\n", purged.purged));
    }
    let mut purged = 0;
    for entry in &entries {
        let deleted = stream
            .delete_message(entry.seq)
            .await
            .map_err(|e| Error::nats(&format!("delete DLQ entry {}", entry.seq), e))?;
        if deleted {
            purged += 1;
        }
    }
    Ok(format!("purged {purged} dead letters\n"))
}

/// Asks on a terminal; refuses without one unless `yes`.
fn confirm(count: usize, yes: bool) -> Result<(), Error> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid_input(format!(
            "purge would delete {count} dead letters: pass --yes to confirm"
        )));
    }
    eprint!("delete {count} dead letters? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::invalid_input(format!("cannot read the answer: {e}")))?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(Error::invalid_input("purge cancelled")),
    }
}

/// On stderr, and only when both outputs are a terminal: piped output gets a line per
/// entry instead.
fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} replaying {bar:30} {pos}/{len} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn pretty<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string_pretty(value)
        .map(|text| text + "\n")
        .map_err(|e| Error::internal(format!("cannot encode as JSON: {e}")))
}

fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let cut: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects::headers as h;
    use async_nats::HeaderMap;
    use bytes::Bytes;

    fn entry(payload: &'static [u8]) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(h::ORIGINAL_SUBJECT, "orders.eu");
        headers.insert(h::DLQ_COMPONENT, "deadletter");
        headers.insert(h::DLQ_CONSUMER, "billing");
        headers.insert(h::DLQ_DELIVERIES, "3");
        headers.insert(h::DLQ_REASON, "x".repeat(100).as_str());
        headers.insert(h::ORIGINAL_SEQ, "ORDERS:17");
        Entry {
            seq: 4,
            stored: OffsetDateTime::UNIX_EPOCH,
            subject: "dlq.orders.eu".into(),
            headers,
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn ls_shows_one_row_per_entry_with_a_short_reason() {
        let out = ls(&[entry(b"{}")], false).unwrap();
        let row = out.lines().nth(1).unwrap();
        assert!(row.starts_with("4 "), "{out}");
        assert!(
            row.contains("orders.eu") && row.contains("deadletter/billing"),
            "{out}"
        );
        assert!(row.ends_with('…'), "{out}");
        let json: Value = serde_json::from_str(&ls(&[entry(b"{}")], true).unwrap()).unwrap();
        assert_eq!(json[0]["deliveries"], 3);
        assert_eq!(json[0]["original_subject"], "orders.eu");
        assert_eq!(json[0]["stream"], "ORDERS");
        assert_eq!(json[0]["stream_seq"], 17);
    }

    #[test]
    fn show_renders_messagepack_as_json() {
        // {"a": 1} in MessagePack.
        let out = show(&entry(b"\x81\xa1a\x01"), false).unwrap();
        assert!(out.contains("\"a\": 1"), "{out}");
        assert!(out.contains("Switchyard-Dlq-Consumer: billing"), "{out}");
        let json: Value =
            serde_json::from_str(&show(&entry(b"\x81\xa1a\x01"), true).unwrap()).unwrap();
        assert_eq!(json["payload"]["a"], 1);
    }
}
