//! `slow`: operation `wait` sleeps as long as asked (`{"ms": 250}`, default from the
//! configuration), then answers `{"ms": <slept>}`, like an agent step that takes time.
//!
//! ```sh
//! cargo run --example slow -- --ms 2000   # SLOW_MS
//! nats req svc.slow.wait '{"ms":250}'
//! ```
//!
//! `switchyard up --demo` runs this definition with the defaults; see
//! `examples/echo.rs` for how.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::Error;
use switchyard::sdk::{Service, ServiceArgs};

/// Longest wait a request may ask for.
pub const MAX_MS: u64 = 300_000;

#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Config {
    /// Milliseconds a call waits when the request does not say.
    #[arg(long, env = "SLOW_MS", default_value_t = 1000)]
    pub ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config { ms: 1000 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Wait {
    #[serde(default)]
    pub ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Waited {
    pub ms: u64,
}

/// The service definition, shared by `main` below and `switchyard up --demo`.
pub fn service(config: Config) -> Result<Service, Error> {
    Ok(Service::new("slow", "1.0.0")?
        .description("Sleeps as long as asked, then answers")
        .operation("wait", move |request: Wait| async move {
            let ms = request.ms.unwrap_or(config.ms);
            if ms > MAX_MS {
                return Err(Error::invalid_input(format!("ms must be at most {MAX_MS}")));
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(Waited { ms })
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
