//! The command-line settings every service program shares, so a service's `main` is
//! two lines: parse, then [`ServiceArgs::run`].

use std::time::Duration;

use super::Service;
use crate::cli::{LogFormat, parse_duration};
use crate::error::Error;

/// `--nats` and how to log in to it (the `--nats-*` flags, `NATS_USER`/`NATS_PASSWORD`,
/// `NATS_TOKEN`, `NATS_CREDS`, TLS), `--heartbeat`, `--task-ack-wait` and `--log`, each
/// with its env fallback. Flatten it into a program's own clap arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// NATS server.
    #[arg(long, env = "NATS_URL", default_value = crate::app::DEFAULT_NATS_URL)]
    pub nats: String,
    #[command(flatten)]
    pub login: crate::nats::auth::NatsLoginArgs,
    /// Registry heartbeat; the entry expires after three missed beats.
    #[arg(long, env = "SWITCHYARD_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// How long a task may go without a sign of life before another instance gets it.
    #[arg(long, env = "SWITCHYARD_TASK_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub task_ack_wait: Duration,
    /// Log filter in tracing's EnvFilter syntax.
    #[arg(long, env = "SWITCHYARD_LOG", default_value = "info")]
    pub log: String,
}

impl ServiceArgs {
    /// Logs, connects, and runs `service` until SIGINT/SIGTERM, then stops gracefully.
    pub async fn run(self, service: Service) -> Result<(), Error> {
        crate::observability::logging::init(&self.log, LogFormat::Text);
        // A service program has no configuration file: flags and env only. A server of
        // `up --secure` wants the services user (`NATS_USER`, `NATS_PASSWORD`, from
        // `services.env`), which this covers too.
        let auth = crate::nats::NatsAuth::resolve(
            &self.login,
            &crate::nats::auth::NatsSection::default(),
            crate::nats::auth::SecretEnv::from_process(),
        )?;
        let client = crate::nats::connect_with(&self.nats, service.name(), &auth).await?;
        service
            .heartbeat(self.heartbeat)
            .task_ack_wait(self.task_ack_wait)
            .run(&client)
            .await
    }
}
