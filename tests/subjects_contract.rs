//! subjects.md is the contract: every name in `src/subjects.rs` and every component
//! subscription is documented there, and everything documented there exists in code.

use std::collections::BTreeSet;

use switchyard::app::catalog;
use switchyard::subjects::{self, BUCKETS, QUEUE_GROUP, SDK_QUEUE_GROUP, STREAMS, headers};

/// The first backticked cell of each table row, per `## ` section.
fn documented(section: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/subjects.md"))
        .expect("subjects.md at the top level");
    let mut names = BTreeSet::new();
    let mut inside = false;
    // Only tables of names count (first column Subject, Stream, …): a section's
    // subsections also hold tables of fields, codes and states.
    let mut names_table = false;
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            inside = title.trim() == section;
            continue;
        }
        if let Some(header) = line.strip_prefix("| ")
            && !line.starts_with("| `")
        {
            let first = header.split('|').next().unwrap_or("").trim();
            names_table = ["Subject", "Queue group", "Stream", "Bucket", "Header"].contains(&first);
            continue;
        }
        if !inside || !names_table || !line.starts_with("| `") {
            continue;
        }
        let cell = line.trim_start_matches("| `");
        if let Some(end) = cell.find('`') {
            // A `|` inside a table cell is written `\|` in Markdown.
            names.insert(cell[..end].replace("\\|", "|"));
        }
    }
    assert!(
        !names.is_empty(),
        "no rows under '## {section}' in subjects.md"
    );
    names
}

fn set<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    names.into_iter().map(str::to_string).collect()
}

#[test]
fn subjects_match() {
    assert_eq!(
        documented("Subjects"),
        set(subjects::ALL_SUBJECTS.iter().copied())
    );
}

#[test]
fn every_component_subscription_is_documented() {
    let documented_subjects = documented("Subjects");
    let groups = documented("Queue groups");
    for component in catalog() {
        for sub in component.subscriptions() {
            assert!(
                documented_subjects.contains(sub.subject),
                "{} subscribes to {} which subjects.md does not list",
                component.name(),
                sub.subject
            );
            if let Some(group) = sub.queue_group {
                assert!(
                    groups.contains(group),
                    "queue group {group} not in subjects.md"
                );
            }
        }
    }
}

#[test]
fn queue_groups_match() {
    assert_eq!(
        documented("Queue groups"),
        set([QUEUE_GROUP, SDK_QUEUE_GROUP])
    );
}

#[test]
fn streams_match_with_their_subjects() {
    assert_eq!(documented("Streams"), set(STREAMS.iter().map(|s| s.name)));
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/subjects.md")).unwrap();
    for stream in STREAMS {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", stream.name)))
            .unwrap();
        for subject in stream.subjects {
            assert!(
                row.contains(&format!("`{subject}`")),
                "{} row lacks {subject}",
                stream.name
            );
        }
    }
}

#[test]
fn buckets_match() {
    assert_eq!(documented("KV buckets"), set(BUCKETS));
}

#[test]
fn headers_match() {
    assert_eq!(documented("Headers"), set(headers::ALL.iter().copied()));
}
