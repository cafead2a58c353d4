//! The nats-server child process `up`, `bench` and the tests start. One implementation
//! for all three, so the tests exercise exactly what users run.
//!
//! The child is stopped on [`EmbeddedServer::stop`] (SIGTERM, then SIGKILL after a
//! timeout) and killed on drop; on Linux it also receives SIGTERM if Switchyard dies
//! without cleaning up, so no nats-server is ever left behind.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::secure::{self, Secrets};
use crate::error::Error;

/// The configuration compiled into the binary, used when `nats/dev.conf` is not found
/// in the working directory (Switchyard run from elsewhere).
const BUILTIN_DEV_CONF: &str = include_str!("../../nats/dev.conf");
const DEFAULT_CONF_PATH: &str = "nats/dev.conf";
/// Oldest server Switchyard accepts: KV and consumer features it relies on are 2.10+.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);
pub const PINNED_SERVER_VERSION: &str = "v2.15.2";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Port 0 lets the server choose a free port (tests); [`EmbeddedServer::listen`]
    /// then tells which.
    pub listen: SocketAddr,
    /// JetStream store (`<dir>/jetstream`), server log and generated files go here.
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub binary: Option<PathBuf>,
}

/// A running nats-server child.
#[derive(Debug)]
pub struct EmbeddedServer {
    child: Option<Child>,
    options: ServerOptions,
    binary: PathBuf,
    config: PathBuf,
    /// Secure mode's passwords, handed to the child through its environment only.
    secrets: Option<Secrets>,
}

impl EmbeddedServer {
    /// Starts the server and waits until it accepts connections. A busy port, a missing
    /// or too-old binary, or a server that exits at once are one-line errors.
    pub fn start(options: ServerOptions) -> Result<EmbeddedServer, Error> {
        Self::launch(options, None)
    }

    /// [`EmbeddedServer::start`] in secure mode: the configuration is followed by
    /// `nats/auth.conf` (written to `<data dir>/secure/nats-secure.conf`) and the server
    /// reads `secrets`' passwords from its environment.
    pub fn start_secure(options: ServerOptions, secrets: Secrets) -> Result<EmbeddedServer, Error> {
        Self::launch(options, Some(secrets))
    }

    fn launch(options: ServerOptions, secrets: Option<Secrets>) -> Result<EmbeddedServer, Error> {
        let binary = find_binary(options.binary.as_deref())?;
        check_binary_version(&binary)?;
        std::fs::create_dir_all(&options.data_dir).map_err(|e| {
            Error::unavailable(format!("cannot create {}: {e}", options.data_dir.display()))
        })?;
        let mut config = resolve_config(options.config.as_deref(), &options.data_dir)?;
        if secrets.is_some() {
            config = secure_config(&config, &options.data_dir)?;
        }
        let mut server = EmbeddedServer {
            child: None,
            options,
            binary,
            config,
            secrets,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let random_port = self.options.listen.port() == 0;
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.config)
            .arg("-a")
            .arg(self.options.listen.ip().to_string());
        if random_port {
            // The server picks a free port itself and reports it in a ports file:
            // no window in which another process can take a port we probed.
            command
                .args(["-p", "-1", "--ports_file_dir"])
                .arg(&self.options.data_dir);
        } else {
            ensure_port_free(self.options.listen)?;
            command
                .arg("-p")
                .arg(self.options.listen.port().to_string());
        }
        let log = self.log_path();
        command
            .arg("-sd")
            .arg(&self.options.data_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(secrets) = &self.secrets {
            command.envs(secrets.server_env());
        }
        die_with_parent(&mut command);
        let child = command.spawn().map_err(|e| {
            Error::unavailable(format!("cannot start {}: {e}", self.binary.display()))
        })?;
        self.child = Some(child);
        self.wait_accepting()
    }

    fn wait_accepting(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(Error::unavailable(format!(
                    "nats-server exited at start ({status}): {}",
                    last_error_line(&self.log_path())
                )));
            }
            if self.options.listen.port() == 0 {
                if let Some(port) = self.reported_port() {
                    self.options.listen.set_port(port);
                }
            } else if TcpStream::connect_timeout(&self.options.listen, Duration::from_millis(200))
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(Error::unavailable(format!(
                    "nats-server did not accept connections on {} within {:?}; see {}",
                    self.options.listen,
                    STARTUP_TIMEOUT,
                    self.log_path().display()
                )));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The port a server started with `-p -1` wrote into its ports file.
    fn reported_port(&self) -> Option<u16> {
        let pid = self.child.as_ref()?.id();
        let file = self
            .options
            .data_dir
            .join(format!("nats-server_{pid}.ports"));
        let text = std::fs::read_to_string(file).ok()?;
        let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
        let url = ports["nats"][0].as_str()?;
        url.rsplit(':').next()?.parse().ok()
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.options.listen)
    }

    pub fn listen(&self) -> SocketAddr {
        self.options.listen
    }

    pub fn log_path(&self) -> PathBuf {
        self.options.data_dir.join("nats-server.log")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Process id of the running child, if any (for tests that kill it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops gracefully (SIGTERM, so JetStream flushes), SIGKILL after `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        send_signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Kills at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts again on the same port and store.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(5);
        // The kernel may hold the port for a moment after the old process exits.
        while ensure_port_free(self.options.listen).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.spawn()
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds nats-server: the explicit path, then where `go install` puts it (GOBIN,
/// GOPATH/bin, ~/go/bin) ahead of PATH, because distributions ship servers too old.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    find_tool("nats-server", explicit)
}

/// Finds a Go-installed NATS tool (`nats-server`, `nats`) the same way.
pub fn find_tool(name: &str, explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::unavailable(format!(
                "{name} not found at {}",
                path.display()
            )))
        };
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(gobin) = std::env::var_os("GOBIN") {
        dirs.push(gobin.into());
    }
    if let Some(gopath) = std::env::var_os("GOPATH") {
        dirs.extend(std::env::split_paths(&gopath).map(|p| p.join("bin")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join("go/bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Error::unavailable(format!(
                "{name} not found (looked in GOBIN, GOPATH/bin, ~/go/bin and PATH); run scripts/setup"
            ))
        })
}

fn check_binary_version(binary: &Path) -> Result<(), Error> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| Error::unavailable(format!("cannot run {}: {e}", binary.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    check_version(text.trim(), &binary.display().to_string())
}

/// Refuses servers older than [`MIN_SERVER_VERSION`], naming the version found and how
/// to upgrade. `version` may carry a `nats-server: v` prefix.
pub fn check_version(version: &str, what: &str) -> Result<(), Error> {
    let number = version.rsplit(['v', ' ']).next().unwrap_or(version);
    let mut parts = number.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
    });
    let parsed = match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
        _ => None,
    };
    match parsed {
        Some(found) if found >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(Error::unavailable(format!(
            "nats-server {version:?} ({what}) is older than {}.{} or unreadable; install {PINNED_SERVER_VERSION} with scripts/setup \
             (go install github.com/nats-io/nats-server/v2@{PINNED_SERVER_VERSION})",
            MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
        ))),
    }
}

/// The explicit config, else `nats/dev.conf` in the working directory, else the
/// built-in copy written into the data directory.
fn resolve_config(explicit: Option<&Path>, data_dir: &Path) -> Result<PathBuf, Error> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Error::unavailable(format!(
                "nats-server configuration {} not found",
                path.display()
            )))
        };
    }
    let local = Path::new(DEFAULT_CONF_PATH);
    if local.is_file() {
        return Ok(local.to_path_buf());
    }
    let written = data_dir.join("nats-dev.conf");
    std::fs::write(&written, BUILTIN_DEV_CONF)
        .map_err(|e| Error::unavailable(format!("cannot write {}: {e}", written.display())))?;
    Ok(written)
}

/// Secure mode's configuration: `base` followed by the users and their permissions.
fn secure_config(base: &Path, data_dir: &Path) -> Result<PathBuf, Error> {
    let text = std::fs::read_to_string(base)
        .map_err(|e| Error::unavailable(format!("cannot read {}: {e}", base.display())))?;
    let path = secure::secure_dir(data_dir)?.join("nats-secure.conf");
    secure::write_private(&path, secure::server_config(&text).as_bytes())?;
    Ok(path)
}

/// One clear line for a busy port instead of a server that dies with a log message.
pub fn ensure_port_free(addr: SocketAddr) -> Result<(), Error> {
    match TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::unavailable(format!(
            "{addr} is already in use (another nats-server or `switchyard up`?): stop it, use it with --nats nats://{addr}, or choose another address"
        ))),
        Err(e) => Err(Error::unavailable(format!("cannot listen on {addr}: {e}"))),
    }
}

fn last_error_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.contains("[FTL]") || l.contains("[ERR]"))
        .or_else(|| text.lines().last())
        .map(|l| l.to_string())
        .unwrap_or_else(|| format!("no log at {}", log.display()))
}

fn send_signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    // PDEATHSIG fires when the spawning thread exits; callers spawn from a thread that
    // lives as long as the server should (the main thread, or a test's thread).
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_gate() {
        assert!(check_version("nats-server: v2.15.2", "x").is_ok());
        assert!(check_version("2.10.0", "x").is_ok());
        assert!(check_version("3.0.0", "x").is_ok());
        let err = check_version("nats-server: v2.9.10", "/usr/sbin/nats-server").unwrap_err();
        assert!(err.message().contains("2.9.10"), "{err}");
        assert!(err.message().contains("scripts/setup"), "{err}");
        assert!(check_version("garbage", "x").is_err());
    }
}
