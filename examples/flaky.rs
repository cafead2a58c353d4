//! `flaky`: operation `call` fails a configurable share of calls, transiently (502,
//! worth retrying) or permanently (422); the others answer `{"call": n}`.
//!
//! ```sh
//! cargo run --example flaky -- --share 0.5 --failure permanent   # FLAKY_SHARE, FLAKY_FAILURE
//! nats req svc.flaky.call '{}' --count 10
//! ```
//!
//! Which calls fail is deterministic, not random: call n (counting from 1 per
//! instance) fails when ⌊n·share⌋ > ⌊(n−1)·share⌋, so exactly ⌊N·share⌋ of the first N
//! calls fail, evenly spread (0.3: calls 4, 7, 10, 14, …; 1.0: every call; 0.0: none).
//! Tests and demos can count on it. `switchyard up --demo` runs this definition with
//! the defaults (0.3, transient); see `examples/echo.rs` for how.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchyard::sdk::{Service, ServiceArgs};
use switchyard::{Error, ErrorKind};

/// How flaky the service is.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Config {
    /// Share of calls that fail, 0.0 to 1.0.
    #[arg(long, env = "FLAKY_SHARE", default_value_t = 0.3)]
    pub share: f64,
    /// How they fail.
    #[arg(long, env = "FLAKY_FAILURE", value_enum, default_value_t = Failure::Transient)]
    pub failure: Failure,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            share: 0.3,
            failure: Failure::Transient,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Failure {
    /// Code 502: may succeed when tried again.
    Transient,
    /// Code 422: will fail again the same way.
    Permanent,
}

impl Failure {
    pub fn kind(self) -> ErrorKind {
        match self {
            Failure::Transient => ErrorKind::Transient,
            Failure::Permanent => ErrorKind::Permanent,
        }
    }
}

/// The service definition, shared by `main` below and `switchyard up --demo`.
pub fn service(config: Config) -> Result<Service, Error> {
    if !(0.0..=1.0).contains(&config.share) {
        return Err(Error::invalid_input("flaky: share must be 0.0 to 1.0"));
    }
    let calls = Arc::new(AtomicU64::new(0));
    Ok(Service::new("flaky", "1.0.0")?
        .description("Fails a configurable share of calls")
        .metadata("share", config.share.to_string())
        .operation("call", move |_request: rmpv::Value| {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            let fails = (n as f64 * config.share).floor() > ((n - 1) as f64 * config.share).floor();
            let kind = config.failure.kind();
            async move {
                if fails {
                    return Err(Error::new(kind, format!("call {n} failed ({kind})")));
                }
                Ok(serde_json::json!({ "call": n }))
            }
        }))
}

#[allow(dead_code)]
#[derive(clap::Parser)]
struct Args {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(flatten)]
    config: Config,
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = <Args as clap::Parser>::parse();
    args.service.run(service(args.config)?).await
}
