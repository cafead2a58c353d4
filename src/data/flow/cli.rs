//! `switchyard flows ls|get|put|rm`: manage the rules in KV bucket `flows` against
//! `--nats`. `put` reads a JSON or TOML file, checks the rule alone and against the
//! rules in the bucket (a target name always means one destination), and writes it
//! under its name with a compare-and-set on the revision it checked against, so two
//! operators cannot overwrite each other unknowingly. Nothing is written when a check
//! fails.

use std::path::Path;

use async_nats::jetstream::kv::{Entry, Operation, Store};
use futures::StreamExt;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use super::rule::{Rule, RuleSpec, check_conflicts};
use crate::cli::FlowsCommand;
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::subjects::{BUCKET_FLOWS, validate_token};

/// The command: connect, run, print.
pub async fn run(config: Config, command: FlowsCommand) -> Result<(), Error> {
    let client = crate::nats::connect::connect_tool(&config, "flows").await?;
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value(BUCKET_FLOWS).await.map_err(|e| {
        Error::nats(
            "open bucket flows (created by switchyard up or run on this server)",
            e,
        )
    })?;
    let out = match command {
        FlowsCommand::Ls(args) => ls(&kv, args.json).await?,
        FlowsCommand::Get(args) => get(&kv, &args.name).await?,
        FlowsCommand::Put(args) => put(&kv, &args.file).await?,
        FlowsCommand::Rm(args) => rm(&kv, &args.name).await?,
    };
    print!("{out}");
    Ok(())
}

/// Reads a rule file: `.json` or `.toml` by extension, else JSON and then TOML.
pub fn read_rule(path: &Path) -> Result<Rule, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid_input(format!("cannot read rule file {}: {e}", path.display()))
    })?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let rule = match extension.as_deref() {
        Some("json") => Rule::from_json(text.as_bytes()),
        Some("toml") => Rule::from_toml(&text),
        _ => Rule::from_json(text.as_bytes()).or_else(|json| {
            Rule::from_toml(&text).map_err(|toml| {
                Error::invalid_input(format!(
                    "neither JSON ({}) nor TOML ({})",
                    json.message(),
                    toml.message()
                ))
            })
        }),
    };
    rule.map_err(|e| {
        Error::new(
            e.kind(),
            format!("invalid rule in {}: {}", path.display(), e.message()),
        )
    })
}

/// `flows put <file>`: what it did, one line.
pub async fn put(kv: &Store, path: &Path) -> Result<String, Error> {
    let rule = read_rule(path)?;
    let name = rule.name().to_string();
    let current = current_rules(kv).await?;
    check_conflicts(&rule, current.iter().filter_map(|(_, r)| r.as_ref().ok()))
        .map_err(|e| Error::invalid_input(format!("rule {name} refused: {}", e.message())))?;
    let value = rule.to_json()?.into();
    let existing = kv
        .entry(name.as_str())
        .await
        .map_err(|e| Error::nats(&format!("read rule {name}"), e))?;
    let (verb, written) = match existing {
        Some(entry) => {
            let verb = match entry.operation {
                Operation::Put => "updated",
                Operation::Delete | Operation::Purge => "created",
            };
            let written = kv
                .update(name.as_str(), value, entry.revision)
                .await
                .map_err(|e| changed_meanwhile(&name, e))?;
            (verb, written)
        }
        None => {
            let written = kv
                .create(name.as_str(), value)
                .await
                .map_err(|e| changed_meanwhile(&name, e))?;
            ("created", written)
        }
    };
    Ok(format!("{verb} rule {name} (revision {written})\n"))
}

/// `flows get <name>`: the stored JSON, pretty-printed.
pub async fn get(kv: &Store, name: &str) -> Result<String, Error> {
    let entry = live_entry(kv, name).await?;
    // In the rule's own field order when it is one; as stored otherwise.
    let pretty = serde_json::from_slice::<RuleSpec>(&entry.value)
        .ok()
        .and_then(|spec| serde_json::to_string_pretty(&spec).ok())
        .or_else(|| {
            serde_json::from_slice::<Value>(&entry.value)
                .ok()
                .and_then(|value| serde_json::to_string_pretty(&value).ok())
        });
    let text = pretty.unwrap_or_else(|| String::from_utf8_lossy(&entry.value).into_owned());
    Ok(format!("{text}\n"))
}

/// `flows rm <name>`: a delete marker, so the history (and routing by time) keeps the
/// rule's previous versions.
pub async fn rm(kv: &Store, name: &str) -> Result<String, Error> {
    let entry = live_entry(kv, name).await?;
    kv.delete_expect_revision(name, Some(entry.revision))
        .await
        .map_err(|e| changed_meanwhile(name, e))?;
    Ok(format!("removed rule {name}\n"))
}

/// `flows ls`: a table, or with `json` one JSON array.
pub async fn ls(kv: &Store, json: bool) -> Result<String, Error> {
    let rules = current_rules(kv).await?;
    if json {
        let items: Vec<Value> = rules
            .iter()
            .map(|(entry, rule)| {
                let mut item = json!({
                    "name": entry.key,
                    "revision": entry.revision,
                    "updated": updated(entry),
                    "rule": serde_json::from_slice::<Value>(&entry.value).unwrap_or(Value::Null),
                });
                if let Err(err) = rule {
                    item["error"] = Value::String(err.message().to_string());
                }
                item
            })
            .collect();
        let text = serde_json::to_string_pretty(&items)
            .map_err(|e| Error::internal(format!("cannot encode the rules: {e}")))?;
        return Ok(format!("{text}\n"));
    }
    if rules.is_empty() {
        return Ok("no flow rules (switchyard flows put <file> adds one)\n".into());
    }
    let mut rows = vec![row(&[
        "NAME", "ENABLED", "SUBJECT", "TARGETS", "KEY", "REVISION", "UPDATED",
    ])];
    let mut notes = String::new();
    for (entry, rule) in &rules {
        let (enabled, subject, targets, key) = match rule {
            Ok(rule) => (
                if rule.enabled() { "yes" } else { "no" }.to_string(),
                rule.spec().matcher.subject.clone(),
                rule.targets()
                    .iter()
                    .map(|t| format!("{}={}", t.name, t.subject))
                    .collect::<Vec<_>>()
                    .join(","),
                rule.describe_key(),
            ),
            Err(err) => {
                notes.push_str(&format!(
                    "{}: invalid, ignored by the live view (the key's previous version stays \
                     in force): {}\n",
                    entry.key,
                    err.message()
                ));
                ("INVALID".into(), "-".into(), "-".into(), "-".into())
            }
        };
        rows.push(vec![
            entry.key.clone(),
            enabled,
            subject,
            targets,
            key,
            entry.revision.to_string(),
            updated(entry),
        ]);
    }
    Ok(format!("{}{notes}", crate::cli::text_table(&rows)))
}

/// Every key of the bucket with its current value, parsed (or why it is invalid), in
/// name order.
async fn current_rules(kv: &Store) -> Result<Vec<(Entry, Result<Rule, Error>)>, Error> {
    let mut keys: Vec<String> = Vec::new();
    let mut listing = kv
        .keys()
        .await
        .map_err(|e| Error::nats("list bucket flows", e))?;
    while let Some(key) = listing.next().await {
        keys.push(key.map_err(|e| Error::nats("list bucket flows", e))?);
    }
    keys.sort();
    let mut rules = Vec::with_capacity(keys.len());
    for key in keys {
        let entry = kv
            .entry(key.as_str())
            .await
            .map_err(|e| Error::nats(&format!("read rule {key}"), e))?;
        let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
            continue;
        };
        let rule = Rule::from_json(&entry.value).and_then(|rule| match rule.name() == key {
            true => Ok(rule),
            false => Err(Error::invalid_input(format!(
                "named {:?} but stored under key {key:?}",
                rule.name()
            ))),
        });
        rules.push((entry, rule));
    }
    Ok(rules)
}

async fn live_entry(kv: &Store, name: &str) -> Result<Entry, Error> {
    validate_token("rule name", name)?;
    kv.entry(name)
        .await
        .map_err(|e| Error::nats(&format!("read rule {name}"), e))?
        .filter(|e| e.operation == Operation::Put)
        .ok_or_else(|| Error::not_found(format!("no flow rule named {name:?}")))
}

fn changed_meanwhile(name: &str, err: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Transient,
        format!("rule {name} changed while it was being written ({err}); run the command again"),
    )
}

fn updated(entry: &Entry) -> String {
    entry
        .created
        .replace_nanosecond(0)
        .unwrap_or(entry.created)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}
