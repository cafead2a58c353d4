//! Connecting to NATS: one place that names the connection, logs its life and refuses
//! servers older than Switchyard supports.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, ServerAddr};

use super::embedded::check_version;
use crate::error::Error;

/// The servers of `url`: one URL, or several separated by commas (the nodes of a
/// cluster; the client picks one and fails over to the others).
pub fn server_addrs(url: &str) -> Result<Vec<ServerAddr>, Error> {
    url.split(',')
        .map(|one| {
            one.trim()
                .parse::<ServerAddr>()
                .map_err(|e| Error::invalid_input(format!("invalid NATS URL {one:?}: {e}")))
        })
        .collect()
}

/// Connects (failing clearly when nobody is there) and checks the server version.
/// After the first connection the client reconnects forever, buffering publishes.
pub async fn connect(url: &str, name: &str) -> Result<Client, Error> {
    connect_as(url, name, None).await
}

/// [`connect`] as `login`'s user (secure mode), or without credentials.
pub async fn connect_as(
    url: &str,
    name: &str,
    login: Option<&super::secure::Login>,
) -> Result<Client, Error> {
    let servers = server_addrs(url)?;
    let options = match login {
        Some(login) => login.apply(ConnectOptions::new()),
        None => ConnectOptions::new(),
    };
    let client = options
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
        .connect(servers)
        .await
        .map_err(|e| Error::unavailable(format!("cannot connect to NATS at {url}: {e}")))?;
    let info = client.server_info();
    check_version(&info.version, &format!("server at {url}"))?;
    Ok(client)
}

/// How the command-line tools (`flows`, `dlq`, `status`, `logs`, `events tail`…)
/// connect: the configured server, else the local default, named after the tool; as
/// the user `NATS_USER`/`NATS_PASSWORD` name when set (a server of `up --secure`).
pub async fn connect_tool(config: &crate::config::Config, tool: &str) -> Result<Client, Error> {
    let url = config
        .nats_url
        .clone()
        .unwrap_or_else(|| crate::app::DEFAULT_NATS_URL.to_string());
    let login = super::secure::login_from_env();
    connect_as(&url, &format!("switchyard-{tool}"), login.as_ref()).await
}

/// Waits until the server has processed everything this client sent before the call:
/// a message to our own fresh inbox comes back only after the server handled every
/// earlier SUB and PUB on this connection. (`Client::flush` only empties the socket
/// buffer; it does not wait for the server.)
pub async fn round_trip(client: &Client) -> Result<(), Error> {
    use futures::StreamExt;
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| Error::nats("subscribe for a round trip", e))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| Error::nats("publish for a round trip", e))?;
    match tokio::time::timeout(Duration::from_secs(10), echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::unavailable("connection closed during a round trip")),
        Err(_) => Err(Error::timeout("NATS round trip took over 10 s")),
    }
}
