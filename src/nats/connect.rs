//! Connecting to NATS: one place that names the connection, logs its life and refuses
//! servers older than Switchyard supports.

use std::time::Duration;

use async_nats::{Client, ConnectError, ConnectErrorKind, ConnectOptions, Event, ServerAddr};

use super::auth::NatsAuth;
use super::embedded::check_version;
use crate::error::{Error, ErrorKind};

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
    let auth = login.map(NatsAuth::from_login).unwrap_or_default();
    connect_with(url, name, &auth).await
}

/// [`connect`] with `auth`'s login and TLS (an external server, `--nats`). A server
/// refusing the login fails the first connection at once with
/// [`ErrorKind::Unauthenticated`]: async-nats tries each server once on the first
/// connect and returns an authorization violation without retrying, so
/// `max_reconnects(None)` only governs reconnecting after a success.
pub async fn connect_with(url: &str, name: &str, auth: &NatsAuth) -> Result<Client, Error> {
    let servers = server_addrs(url)?;
    let client = auth
        .apply(ConnectOptions::new())?
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
        .map_err(|e| connect_error(url, auth, &e))?;
    let info = client.server_info();
    check_version(&info.version, &format!("server at {url}"))?;
    Ok(client)
}

/// A first connection that failed, said so the reader knows what to change.
fn connect_error(url: &str, auth: &NatsAuth, err: &ConnectError) -> Error {
    let text = err.to_string();
    // rustls' certificate failures come back as I/O errors, not as the TLS kind.
    let tls = matches!(err.kind(), ConnectErrorKind::Tls)
        || text.contains("certificate")
        || text.contains("TLS");
    // The server says only "authorization violation"; for a credentials file the
    // usual causes are worth naming, as the other logins' variables are not.
    let check = match &auth.creds {
        Some(_) => {
            "check --nats-creds (NATS_CREDS, [nats] creds): the server must know the \
             user's account (its resolver), the JWT must not be expired or revoked and \
             the seed must be the JWT's user's"
        }
        None => {
            "check NATS_USER/NATS_PASSWORD, NATS_TOKEN, --nats-creds or the [nats] \
             section of the configuration"
        }
    };
    match err.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => Error::new(
            ErrorKind::Unauthenticated,
            format!(
                "authorization violation: the NATS server at {url} refused {} ({text}); \
                 {check}",
                auth.presented()
            ),
        ),
        _ if tls => Error::unavailable(format!(
            "TLS with the NATS server at {url} failed: {text}; a server certificate from \
             your own CA needs --nats-tls-ca (NATS_CA), a server that verifies clients \
             --nats-tls-cert and --nats-tls-key"
        )),
        _ => Error::unavailable(format!("cannot connect to NATS at {url}: {text}")),
    }
}

/// How the command-line tools (`flows`, `dlq`, `status`, `logs`, `events tail`…)
/// connect: the configured server, else the local default, named after the tool, with
/// the configured login ([`NatsAuth`]: `--nats-creds`, `NATS_USER`/`NATS_PASSWORD`,
/// `NATS_TOKEN`, TLS; the files of `up --secure` set `NATS_USER`/`NATS_PASSWORD`).
pub async fn connect_tool(config: &crate::config::Config, tool: &str) -> Result<Client, Error> {
    let url = config
        .nats_url
        .clone()
        .unwrap_or_else(|| crate::app::DEFAULT_NATS_URL.to_string());
    connect_with(&url, &format!("switchyard-{tool}"), &config.nats_auth).await
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
