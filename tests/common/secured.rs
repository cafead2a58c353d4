//! A nats-server with a login configured, and `switchyard` run against it: what the
//! external login tests (tests/external_auth.rs, tests/external_creds.rs) share.
//! Included by those two only (`#[path]`).
#![allow(dead_code)] // each of the two uses a different part

use std::time::{Duration, Instant};

use super::common::{Process, eventually, http_get, repo_path, run_to_end_with_env};
use switchyard::nats::{EmbeddedServer, ServerOptions};

pub const WAIT: Duration = Duration::from_secs(60);

/// A nats-server running `nats/dev.conf` followed by `extra`.
pub struct SecuredServer {
    server: EmbeddedServer,
    dir: tempfile::TempDir,
}

impl SecuredServer {
    pub fn start(extra: &str) -> SecuredServer {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::read_to_string(repo_path("nats/dev.conf")).unwrap();
        let config = dir.path().join("server.conf");
        std::fs::write(&config, format!("{base}\n{extra}\n")).unwrap();
        let options = ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            config: Some(config),
            binary: None,
        };
        let server = EmbeddedServer::start(options)
            .unwrap_or_else(|e| panic!("cannot start nats-server (run scripts/setup): {e}"));
        SecuredServer { server, dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The address it listens on.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.server.listen()
    }

    /// A file holding `text` (a secret), in this server's temporary directory.
    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for SecuredServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.server.log_path()).unwrap_or_default();
            eprintln!("---- nats-server log ----\n{log}");
        }
    }
}

/// `switchyard run instance` with `login` until /readyz answers 200; the time it took.
pub fn run_until_ready(url: &str, login: &[&str]) -> (Process, Duration) {
    let started = Instant::now();
    let (process, admin) = Process::run_instance_with_args(url, login);
    let ready = eventually(WAIT, || {
        http_get(admin, "/readyz").filter(|(status, _)| *status == 200)
    });
    assert!(
        ready.is_some(),
        "not ready within {WAIT:?}: {}",
        process.stderr()
    );
    (process, started.elapsed())
}

/// `switchyard run instance` with `login` must exit by itself, non-zero: (stderr, time).
pub fn run_refused(url: &str, login: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let (mut process, _admin) = Process::run_instance_with_args(url, login);
    let code = process.wait(WAIT);
    let elapsed = started.elapsed();
    assert!(
        matches!(code, Some(c) if c != 0),
        "expected a non-zero exit, got {code:?} after {elapsed:?}"
    );
    (process.stderr(), elapsed)
}

/// `switchyard <args>` to the end with `env`: (exit code, stdout, stderr).
pub fn tool(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let cwd = std::env::temp_dir();
    run_to_end_with_env(args, &cwd, env)
}
