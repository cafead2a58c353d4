//! The one error taxonomy. Every component returns [`Error`]; its [`ErrorKind`] decides
//! the reply code (`Nats-Service-Error-Code`, and the HTTP status the gateway maps it
//! to), whether a caller may retry, and whether data involved is dead-lettered.
//! Tests assert on kinds, never on message strings.

use std::fmt;

/// What went wrong, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong: malformed payload, bad subject token, invalid rule.
    InvalidInput,
    /// The caller did not prove who it is: no credential, or one nobody issued (the
    /// HTTP ingress without a valid API key).
    Unauthenticated,
    /// The named service, key or rule does not exist.
    NotFound,
    /// The payload exceeds the server's `max_payload` or a configured limit.
    PayloadTooLarge,
    /// The content type is neither JSON nor MessagePack.
    UnsupportedMediaType,
    /// Too much work in flight; back off and try again.
    Overloaded,
    /// Nobody is there to answer (no responders, no live instance).
    Unavailable,
    /// The deadline passed before an answer came.
    Timeout,
    /// A failure that may succeed when tried again.
    Transient,
    /// A failure that will fail again the same way.
    Permanent,
    /// A bug or an unexpected condition inside Switchyard.
    Internal,
}

impl ErrorKind {
    /// Every kind, for documentation and exhaustive tests.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::InvalidInput,
        ErrorKind::Unauthenticated,
        ErrorKind::NotFound,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Transient,
        ErrorKind::Permanent,
        ErrorKind::Internal,
    ];

    /// The code carried in `Nats-Service-Error-Code`; HTTP-compatible on purpose so the
    /// gateway's HTTP ingress answers with the same number.
    pub fn code(self) -> u16 {
        match self {
            ErrorKind::InvalidInput => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Permanent => 422,
            ErrorKind::Overloaded => 429,
            ErrorKind::Internal => 500,
            ErrorKind::Transient => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// The kind a reply code stands for; unknown codes map to the nearest class.
    pub fn from_code(code: u16) -> ErrorKind {
        if let Some(kind) = ErrorKind::ALL.into_iter().find(|k| k.code() == code) {
            return kind;
        }
        if (400..500).contains(&code) {
            ErrorKind::Permanent
        } else {
            ErrorKind::Internal
        }
    }

    /// Whether trying the same call again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Overloaded
                | ErrorKind::Unavailable
                | ErrorKind::Timeout
                | ErrorKind::Transient
        )
    }

    /// How Switchyard handles a failure of this kind everywhere (gateway, SDK, data
    /// sync, tasks): the one table, documented in the README and tested against it.
    pub fn handling(self) -> Handling {
        let retried = self.is_retryable();
        Handling {
            code: self.code(),
            http_status: self.code(),
            retried,
            settle: if retried {
                Settle::NakWithDelay
            } else {
                Settle::Terminate
            },
            dead_letter: if retried {
                DeadLetterWhen::DeliveriesExhausted
            } else {
                DeadLetterWhen::AtOnce
            },
        }
    }

    /// Stable snake_case name, used as the `kind` metric label and in error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a failure of one [`ErrorKind`]: see [`ErrorKind::handling`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handling {
    /// `Nats-Service-Error-Code` on an error reply.
    pub code: u16,
    /// The HTTP ingress's status for it.
    pub http_status: u16,
    /// Whether the gateway retries the call (within the deadline and the retry budget)
    /// and a JetStream consumer redelivers the message.
    pub retried: bool,
    /// What a JetStream consumer does with the message that failed.
    pub settle: Settle,
    /// When data involved is dead-lettered.
    pub dead_letter: DeadLetterWhen,
}

/// How a JetStream consumer settles a message whose processing failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// `-NAK` with a jittered delay: redelivered until max deliveries.
    NakWithDelay,
    /// `+TERM`: never redelivered (it would fail the same way).
    Terminate,
}

/// When a failed message goes to the dead-letter stream `DLQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterWhen {
    /// On the first failure: retrying cannot help.
    AtOnce,
    /// When its last allowed delivery fails too.
    DeliveriesExhausted,
}

impl Settle {
    pub fn as_str(self) -> &'static str {
        match self {
            Settle::NakWithDelay => "nak with jittered delay",
            Settle::Terminate => "terminate",
        }
    }
}

impl DeadLetterWhen {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterWhen::AtOnce => "at once",
            DeadLetterWhen::DeliveriesExhausted => "after max deliveries",
        }
    }
}

/// The taxonomy as a Markdown table (the README's copy is tested against it).
pub fn taxonomy_table() -> String {
    let mut table = String::from(
        "| kind | code / HTTP | retried | JetStream message | dead-lettered |\n\
         |---|---|---|---|---|\n",
    );
    for kind in ErrorKind::ALL {
        let h = kind.handling();
        table.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            kind.as_str(),
            h.code,
            if h.retried { "yes" } else { "no" },
            h.settle.as_str(),
            h.dead_letter.as_str()
        ));
    }
    table
}

/// Longest error text carried in a header; a longer message is cut (a header must stay
/// far below `max_payload`).
pub const MAX_HEADER_TEXT: usize = 1024;

/// A typed error: a kind plus a message meant for the person reading the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn code(&self) -> u16 {
        self.kind.code()
    }

    /// The message as a `Nats-Service-Error` value: one line (CR/LF would break the
    /// protocol framing), at most [`MAX_HEADER_TEXT`] bytes, never empty.
    pub fn header_text(&self) -> String {
        let mut text = self.message.replace(['\r', '\n'], " ");
        if text.len() > MAX_HEADER_TEXT {
            let mut cut = MAX_HEADER_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        if text.is_empty() {
            text = self.kind.as_str().to_string();
        }
        text
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unavailable, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Timeout, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }

    /// Wraps a NATS-side failure, with `what` saying what Switchyard was doing.
    pub fn nats(what: &str, err: impl fmt::Display) -> Self {
        Error::unavailable(format!("{what}: {err}"))
    }
}

impl From<async_nats::RequestError> for Error {
    fn from(err: async_nats::RequestError) -> Self {
        use async_nats::RequestErrorKind;
        match err.kind() {
            RequestErrorKind::NoResponders => Error::unavailable("no responders"),
            RequestErrorKind::TimedOut => Error::timeout("request timed out"),
            RequestErrorKind::InvalidSubject => Error::invalid_input(format!("{err}")),
            RequestErrorKind::MaxPayloadExceeded => {
                Error::new(ErrorKind::PayloadTooLarge, format!("{err}"))
            }
            RequestErrorKind::Other => Error::unavailable(format!("request failed: {err}")),
        }
    }
}

impl From<async_nats::PublishError> for Error {
    fn from(err: async_nats::PublishError) -> Self {
        use async_nats::client::PublishErrorKind;
        match err.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                Error::new(ErrorKind::PayloadTooLarge, format!("{err}"))
            }
            PublishErrorKind::InvalidSubject => Error::invalid_input(format!("{err}")),
            PublishErrorKind::Send => Error::unavailable(format!("publish failed: {err}")),
        }
    }
}

impl From<async_nats::jetstream::context::PublishError> for Error {
    fn from(err: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind;
        match err.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                Error::new(ErrorKind::PayloadTooLarge, format!("{err}"))
            }
            PublishErrorKind::TimedOut => Error::timeout(format!("JetStream publish: {err}")),
            PublishErrorKind::StreamNotFound => {
                Error::unavailable(format!("JetStream publish: {err}"))
            }
            _ => Error::new(ErrorKind::Transient, format!("JetStream publish: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            assert!(seen.insert(kind.code()), "duplicate code for {kind}");
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
    }

    #[test]
    fn header_text_is_one_bounded_line() {
        let err = Error::new(ErrorKind::Transient, "a\r\nb");
        assert_eq!(err.header_text(), "a  b");
        let err = Error::new(ErrorKind::Permanent, "é".repeat(2000));
        let text = err.header_text();
        assert!(text.len() <= MAX_HEADER_TEXT && text.starts_with('é'));
        assert_eq!(Error::internal("").header_text(), "internal");
    }

    #[test]
    fn the_readme_shows_the_taxonomy_as_it_is() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let table = taxonomy_table();
        assert!(
            readme.contains(&table),
            "README.md must contain the taxonomy table:\n{table}"
        );
    }

    #[test]
    fn retried_kinds_are_nakked_and_dead_lettered_only_when_deliveries_run_out() {
        for kind in ErrorKind::ALL {
            let h = kind.handling();
            assert_eq!(h.retried, h.settle == Settle::NakWithDelay, "{kind}");
            assert_eq!(
                !h.retried,
                h.dead_letter == DeadLetterWhen::AtOnce,
                "{kind}"
            );
        }
    }

    #[test]
    fn only_passing_conditions_are_retryable() {
        assert!(ErrorKind::Timeout.is_retryable());
        assert!(ErrorKind::Transient.is_retryable());
        assert!(!ErrorKind::InvalidInput.is_retryable());
        assert!(!ErrorKind::Permanent.is_retryable());
    }
}
