//! The server a bench run uses when no `--nats` is given: an embedded nats-server on a
//! free loopback port with a throwaway store.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;

use crate::cli::BenchArgs;
use crate::config::Config;
use crate::error::Error;
use crate::nats::{EmbeddedServer, ServerOptions};

/// An embedded server on a free loopback port (or `--nats-listen`), with its store in
/// a fresh temporary directory (or `--data-dir`, which is then kept).
pub fn start_server(
    config: &Config,
    args: &BenchArgs,
) -> Result<(EmbeddedServer, Option<PathBuf>), Error> {
    let listen = match args.server.nats_listen {
        Some(listen) => listen,
        None => free_loopback_port()?,
    };
    let (data_dir, temp_dir) = match &args.server.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let name = format!("switchyard-bench-{}-{}", std::process::id(), listen.port());
            let dir = std::env::temp_dir().join(name);
            (dir.clone(), Some(dir))
        }
    };
    let started = EmbeddedServer::start(ServerOptions {
        listen,
        data_dir,
        config: config.embedded.config.clone(),
        binary: config.embedded.server_bin.clone(),
    });
    match started {
        Ok(server) => Ok((server, temp_dir)),
        Err(e) => {
            if let Some(dir) = temp_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            Err(e)
        }
    }
}

fn free_loopback_port() -> Result<SocketAddr, Error> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::unavailable(format!("no free loopback port: {e}")))
}

/// A URL without its credentials, for the report.
pub fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        (None, Some((_, host))) => host.to_string(),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(redact_url("nats://u:p@host:4222"), "nats://host:4222");
        assert_eq!(redact_url("tok@host:4222"), "host:4222");
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
    }
}
