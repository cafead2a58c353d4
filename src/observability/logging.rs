//! Process logging: tracing with a filter that can change at runtime, on stderr as text
//! or JSON, and (once [`super::logs::attach`] has a connection) on NATS as well.
//!
//! Filters speak in components: `sync=debug,gateway=warn,info` sets the data sync
//! component to debug, the gateway to warn and everything else to info. Component
//! names become their module paths ([`COMPONENT_TARGETS`]); anything else is passed to
//! tracing's EnvFilter as written (`async_nats=debug`).

use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::cli::LogFormat;
use crate::error::Error;

/// Component names and the module each one lives in: how filters and log subjects
/// name components.
pub const COMPONENT_TARGETS: [(&str, &str); 18] = [
    ("gateway", "switchyard::integration::gateway"),
    ("registry", "switchyard::integration::registry"),
    ("bus", "switchyard::integration::bus"),
    ("flow", "switchyard::data::flow"),
    ("sync", "switchyard::data::sync"),
    ("cache", "switchyard::data::cache"),
    ("coordinator", "switchyard::system::coordinator"),
    ("health", "switchyard::system::health"),
    ("monitor", "switchyard::system::monitor"),
    ("alerts", "switchyard::observability::alerts"),
    ("instance", "switchyard::system::instance"),
    ("deadletter", "switchyard::resilience::deadletter"),
    ("tasks", "switchyard::resilience::tasks"),
    ("resilience", "switchyard::resilience"),
    ("sdk", "switchyard::sdk"),
    ("nats", "switchyard::nats"),
    ("component", "switchyard::component"),
    ("app", "switchyard::app"),
];

/// The component a log event's target belongs to (`switchyard` for the crate's other
/// modules, `external` for other crates).
pub fn component_of(target: &str) -> &'static str {
    COMPONENT_TARGETS
        .iter()
        .find(|(_, module)| {
            target
                .strip_prefix(module)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
        .map(|(name, _)| *name)
        .unwrap_or(if target.starts_with("switchyard") {
            "switchyard"
        } else {
            "external"
        })
}

/// Turns a filter in component names into an EnvFilter, or says what is wrong. Field
/// filters (`[span{field=value}]`) are refused: anyone may send a filter on
/// `sys.log.level`, and fuzzing (fuzz/names) found that a crafted field value took tens
/// of seconds of CPU to compile as a regular expression, and that some field lists
/// make tracing-subscriber panic (an ordering invariant it asserts in debug builds).
pub fn parse_filter(filter: &str) -> Result<EnvFilter, Error> {
    if filter.contains('{') {
        return Err(Error::invalid_input(format!(
            "invalid log filter {filter:?}: field filters ({{field=value}}) are not supported; \
             use component or module names, spans and levels"
        )));
    }
    let translated = translate(filter);
    EnvFilter::try_new(&translated)
        .map_err(|e| Error::invalid_input(format!("invalid log filter {filter:?}: {e}")))
}

/// `sync=debug,info` → `switchyard::data::sync=debug,info`.
pub fn translate(filter: &str) -> String {
    filter
        .split(',')
        .map(|directive| {
            let directive = directive.trim();
            match directive.split_once('=') {
                Some((name, level)) => match COMPONENT_TARGETS.iter().find(|(n, _)| *n == name) {
                    Some((_, module)) => format!("{module}={level}"),
                    None => directive.to_string(),
                },
                None => directive.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the global subscriber. `filter` was validated with the configuration;
/// a second call (tests) is ignored.
pub fn init(filter: &str, format: LogFormat) {
    let env_filter = parse_filter(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter_layer, handle) = reload::Layer::new(env_filter);
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let nats = super::logs::NatsLayer;
    let installed = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(filter_layer)
            .with(stderr)
            .with(nats)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter_layer)
            .with(stderr.json())
            .with(nats)
            .try_init(),
    };
    if installed.is_ok() {
        let _ = CONTROL.set(Control {
            handle,
            current: Mutex::new(filter.to_string()),
        });
    }
}

/// Changes this process's filter at once; the filter in force when this is refused.
pub fn set_filter(filter: &str) -> Result<String, Error> {
    let parsed = parse_filter(filter)?;
    let control = CONTROL
        .get()
        .ok_or_else(|| Error::unavailable("this process does not manage its log filter"))?;
    control
        .handle
        .reload(parsed)
        .map_err(|e| Error::internal(format!("cannot change the log filter: {e}")))?;
    if let Ok(mut current) = control.current.lock() {
        *current = filter.to_string();
    }
    tracing::info!(filter, "log filter changed");
    Ok(filter.to_string())
}

/// The filter in force, as it was given.
pub fn current_filter() -> Option<String> {
    CONTROL
        .get()
        .and_then(|c| c.current.lock().ok().map(|f| f.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_name_their_modules() {
        assert_eq!(component_of("switchyard::data::sync::worker"), "sync");
        assert_eq!(component_of("switchyard::data::syncer"), "switchyard");
        assert_eq!(component_of("switchyard::resilience::tasks::x"), "tasks");
        assert_eq!(component_of("switchyard::resilience::retry"), "resilience");
        assert_eq!(component_of("async_nats::connector"), "external");
    }

    #[test]
    fn filters_translate_component_names() {
        assert_eq!(
            translate("sync=debug, gateway=warn,info"),
            "switchyard::data::sync=debug,switchyard::integration::gateway=warn,info"
        );
        assert!(parse_filter("sync=debug,info").is_ok());
        let err = parse_filter("sync=loud").unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput);
    }

    #[test]
    fn field_filters_are_refused() {
        // What fuzz/names found first: ~27 s of CPU to compile as a regular expression.
        // The input that made tracing-subscriber panic is the seed
        // fuzz/corpus/names/found-field-order-panic.
        let slow = format!(
            "[n\0{{\u{6}\u{6}\u{6}\u{6}ine\0\0\0\u{6}\u{6}=u\u{6}\u{6}\u{6}\u{6}.\u{6}\u{6}\0{}\
             E\u{6}\u{6}\u{6}\u{6}\u{6}\u{6}\0E\u{6}\u{6}\u{6}\u{6}\u{6}w[\u{1}]a}}}},",
            ".".repeat(55)
        );
        for filter in [slow.as_str(), "[request{service=echo}]=debug"] {
            let err = parse_filter(filter).unwrap_err();
            assert_eq!(err.kind(), crate::error::ErrorKind::InvalidInput);
            assert!(err.message().contains("field filters"), "{err}");
        }
        assert!(parse_filter("[request]=debug,sync=trace,info").is_ok());
    }
}
