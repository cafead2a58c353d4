//! Connecting to NATS: one place that names the connection, logs its life and refuses
//! servers older than Switchyard supports.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};

use super::embedded::check_version;
use crate::error::Error;

/// Connects (failing clearly when nobody is there) and checks the server version.
/// After the first connection the client reconnects forever, buffering publishes.
pub async fn connect(url: &str, name: &str) -> Result<Client, Error> {
    let client = ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("NATS connected"),
                Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                Event::SlowConsumer(sid) => tracing::warn!(sid, "NATS slow consumer"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(url)
        .await
        .map_err(|e| Error::unavailable(format!("cannot connect to NATS at {url}: {e}")))?;
    let info = client.server_info();
    check_version(&info.version, &format!("server at {url}"))?;
    Ok(client)
}
