//! `switchyard up --demo`: the example services `echo`, `flaky` and `slow`, started on
//! the same NATS server after the components and stopped (deregistering) before them.
//!
//! The services are the files in `examples/`, compiled into the library here so `up`
//! runs exactly the code users read and `cargo run --example` runs; each exposes the
//! `service(…)` definition its own `main` uses. They refer to the crate as
//! `switchyard::…`, which `extern crate self as switchyard` in `lib.rs` makes work
//! inside the crate too.

#[path = "../examples/echo.rs"]
pub mod echo;
#[path = "../examples/flaky.rs"]
pub mod flaky;
#[path = "../examples/slow.rs"]
pub mod slow;

use crate::error::Error;
use crate::nats::NatsAuth;
use crate::sdk::{RunningService, Service};

/// The demo services, running.
pub struct Demo {
    services: Vec<RunningService>,
}

impl Demo {
    /// Starts the three services, each on its own connection to `url` as a separate
    /// service program would, logged in with `auth` (in secure mode the user
    /// `services`, whose permission to answer a request covers one answer per
    /// connection; against an external server, its configured login).
    pub async fn start(url: &str, auth: &NatsAuth) -> Result<Demo, Error> {
        let definitions: [Result<Service, Error>; 3] = [
            echo::service(),
            flaky::service(flaky::Config::default()),
            slow::service(slow::Config::default()),
        ];
        let mut demo = Demo {
            services: Vec::new(),
        };
        for definition in definitions {
            match definition {
                Ok(service) => match start_one(url, auth, service).await {
                    Ok(running) => demo.services.push(running),
                    Err(err) => {
                        demo.stop().await;
                        return Err(err);
                    }
                },
                Err(err) => {
                    demo.stop().await;
                    return Err(err);
                }
            }
        }
        Ok(demo)
    }

    /// Names of the running services.
    pub fn names(&self) -> Vec<&str> {
        self.services.iter().map(RunningService::name).collect()
    }

    /// Stops every service gracefully (they deregister), all at once.
    pub async fn stop(self) {
        let stops = self.services.into_iter().map(|service| async move {
            let name = service.name().to_string();
            let report = service.stop().await;
            tracing::info!(service = %name, ?report, "demo service stopped");
        });
        futures::future::join_all(stops).await;
    }
}

async fn start_one(url: &str, auth: &NatsAuth, service: Service) -> Result<RunningService, Error> {
    let name = format!("switchyard-demo-{}", service.name());
    let client = crate::nats::connect_with(url, &name, auth).await?;
    service.start(&client).await
}
