//! Which dead letters a `dlq` command looks at: a pattern on the original subject
//! (NATS wildcards, so the server filters `dlq.<pattern>`), and a time window on when
//! the entry was stored (`--since 10m`, `--until 2026-11-26T10:00:00Z`).

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::Error;
use crate::subjects::STREAM_DLQ;

/// A selection of entries of stream `DLQ`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    /// Pattern on the original subject (`orders.*`, `data.in.>`); `None` is every one.
    pub pattern: Option<String>,
    /// Entries stored at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Entries stored at or before this time.
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Parses the command-line forms: the pattern checked, each time either a
    /// duration back from `now` (`10m`, `2h`) or an RFC 3339 time.
    pub fn parse(
        pattern: Option<&str>,
        since: Option<&str>,
        until: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Filter, Error> {
        if let Some(pattern) = pattern {
            validate_pattern(pattern)?;
        }
        let since = since.map(|s| parse_time("--since", s, now)).transpose()?;
        let until = until.map(|u| parse_time("--until", u, now)).transpose()?;
        if let (Some(since), Some(until)) = (since, until)
            && since > until
        {
            return Err(Error::invalid_input("--since is later than --until"));
        }
        Ok(Filter {
            pattern: pattern.map(str::to_string),
            since,
            until,
        })
    }

    /// Whether anything narrows the selection.
    pub fn is_empty(&self) -> bool {
        self.pattern.is_none() && self.since.is_none() && self.until.is_none()
    }

    /// Whether only the subject narrows it (so a purge by subject does it all).
    pub fn subject_only(&self) -> bool {
        self.since.is_none() && self.until.is_none()
    }

    /// The subject filter on stream `DLQ`: `dlq.<pattern>`, or `dlq.>`.
    pub fn dlq_subject(&self) -> String {
        let pattern = self.pattern.as_deref().unwrap_or(">");
        format!("{}.{pattern}", dlq_prefix())
    }

    /// Whether an entry stored at `stored` is inside the time window.
    pub fn admits_time(&self, stored: OffsetDateTime) -> bool {
        self.since.is_none_or(|since| stored >= since)
            && self.until.is_none_or(|until| stored <= until)
    }

    /// Whether an entry on `dlq_subject` stored at `stored` is selected.
    pub fn admits(&self, dlq_subject: &str, stored: OffsetDateTime) -> bool {
        self.admits_time(stored) && subject_matches(&self.dlq_subject(), dlq_subject)
    }
}

/// `dlq`: the first token of every subject stream `DLQ` captures.
fn dlq_prefix() -> &'static str {
    STREAM_DLQ.subjects[0].trim_end_matches(".>")
}

/// Checks a subject pattern: tokens separated by single dots, each `*`, a final `>`,
/// or printable ASCII without wildcards.
pub fn validate_pattern(pattern: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::invalid_input(format!(
            "invalid subject pattern {pattern:?}: {why} (examples: orders.eu, orders.*, data.in.>)"
        )))
    };
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return bad("empty token");
        }
        if *token == ">" && i + 1 != tokens.len() {
            return bad("> must be the last token");
        }
        let literal = token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>');
        if !(literal || *token == "*" || *token == ">") {
            return bad("a token is *, > or printable ASCII without wildcards");
        }
    }
    Ok(())
}

/// NATS subject matching of a literal `subject` against `pattern`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        if token == ">" {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(s) if token == "*" || token == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// A duration back from `now` (`10m`, `1h30m`) or an RFC 3339 time.
pub fn parse_time(flag: &str, value: &str, now: OffsetDateTime) -> Result<OffsetDateTime, Error> {
    if let Ok(time) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(time);
    }
    let ago: Duration = humantime::parse_duration(value).map_err(|_| {
        Error::invalid_input(format!(
            "invalid {flag} {value:?}: a duration back from now (10m, 2h) or an RFC 3339 time"
        ))
    })?;
    Ok(now - ago)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
    }

    #[test]
    fn patterns_follow_nats_wildcards() {
        for good in ["orders", "orders.*", "data.in.>", ">", "a.*.c", "$KV.b.k=1"] {
            assert!(validate_pattern(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "a.>.b", "a b", "ord*", "a.b>", ".a", "é"] {
            let err = validate_pattern(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn matching_is_token_by_token() {
        assert!(subject_matches("dlq.>", "dlq.orders.eu"));
        assert!(subject_matches("dlq.orders.*", "dlq.orders.eu"));
        assert!(!subject_matches("dlq.orders.*", "dlq.orders.eu.x"));
        assert!(!subject_matches("dlq.orders.>", "dlq.orders"));
        assert!(subject_matches("dlq.orders", "dlq.orders"));
        assert!(!subject_matches("dlq.orders", "dlq.orders2"));
    }

    #[test]
    fn the_pattern_filters_the_dlq_subject() {
        let filter = Filter::parse(Some("orders.*"), None, None, now()).unwrap();
        assert_eq!(filter.dlq_subject(), "dlq.orders.*");
        assert!(filter.admits("dlq.orders.eu", now()));
        assert!(!filter.admits("dlq.data.in.x", now()));
        assert_eq!(Filter::default().dlq_subject(), "dlq.>");
        assert!(Filter::default().is_empty());
    }

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let filter = Filter::parse(None, Some("10m"), Some("2026-01-01T00:00:00Z"), now());
        // since (now - 10m) is after until (2026-01-01 is before now - 10m): refused.
        assert_eq!(filter.unwrap_err().kind(), ErrorKind::InvalidInput);
        let filter = Filter::parse(None, Some("10m"), None, now()).unwrap();
        assert_eq!(filter.since, Some(now() - Duration::from_secs(600)));
        assert!(filter.admits_time(now()));
        assert!(!filter.admits_time(now() - Duration::from_secs(601)));
        assert!(!filter.subject_only());
        let err = Filter::parse(None, Some("yesterday-ish"), None, now()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
}
