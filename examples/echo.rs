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

use switchyard::sdk::{Service, ServiceArgs};

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
    #[command(flatten)]
    service: ServiceArgs,
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), switchyard::Error> {
    let args = <Args as clap::Parser>::parse();
    args.service.run(service()?).await
}
