//! `echo`: operation `say` answers whatever it gets, unchanged, in the caller's codec.
//!
//! ```sh
//! cargo run --example echo -- --nats nats://127.0.0.1:4222   # or NATS_URL
//! nats req svc.echo.say '{"text":"hi"}'
//! ```
//!
//! `switchyard up --demo` runs this very definition: `src/demo.rs` compiles this file
//! into the library as `switchyard::demo::echo` (hence `main` allowing dead code: the
//! library never calls it).

use std::time::Duration;

use switchyard::sdk::Service;

/// The service definition, shared by `main` below and `switchyard up --demo`.
pub fn service() -> Result<Service, switchyard::Error> {
    Ok(Service::new("echo", "1.0.0")?
        .description("Says back what it gets")
        .metadata("example", "echo")
        // Any MessagePack or JSON document, answered as it came.
        .operation("say", |request: rmpv::Value| async move { Ok(request) }))
}

#[allow(dead_code)]
#[derive(clap::Parser)]
struct Args {
    /// NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Registry heartbeat; the entry expires after three missed beats.
    #[arg(long, default_value = "5s", value_parser = switchyard::cli::parse_duration)]
    heartbeat: Duration,
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), switchyard::Error> {
    let args = <Args as clap::Parser>::parse();
    switchyard::observability::logging::init("info", Default::default());
    let client = switchyard::nats::connect(&args.nats, "echo").await?;
    service()?.heartbeat(args.heartbeat).run(&client).await
}
