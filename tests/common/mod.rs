//! Test harness: a real nats-server on a free loopback port with a temporary store,
//! killed on drop, its log printed when the test failed. No mock of NATS anywhere.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard::admin::Readiness;
use switchyard::component::Component;
use switchyard::component::supervisor::Supervisor;
use switchyard::config::JetStreamConfig;
use switchyard::envelope::Envelope;
use switchyard::integration::bus::catalog::ServiceLifecycle;
use switchyard::integration::registry::{EndpointEntry, Health, RegistryEntry};
use switchyard::nats::{EmbeddedServer, ServerOptions};

/// A loopback port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

pub struct TestServer {
    pub server: EmbeddedServer,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts nats-server with the repository's `nats/dev.conf`. A missing server is a
    /// failure (run scripts/setup), never a skip.
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temporary store");
        let options = ServerOptions {
            // Port 0: the server picks a free port itself, so parallel tests never race.
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            data_dir: dir.path().to_path_buf(),
            config: Some(repo_path("nats/dev.conf")),
            binary: None,
        };
        match EmbeddedServer::start(options) {
            Ok(server) => TestServer { server, dir },
            Err(err) => panic!("cannot start nats-server (run scripts/setup): {err}"),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn client(&self) -> async_nats::Client {
        switchyard::nats::connect(&self.url(), "switchyard-test")
            .await
            .expect("connect to the test server")
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.server.log_path()).unwrap_or_default();
            eprintln!(
                "---- nats-server log ({}) ----\n{log}",
                self.server.log_path().display()
            );
        }
    }
}

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// JetStream settings for a single test server: one replica.
pub fn jetstream_config() -> JetStreamConfig {
    JetStreamConfig {
        replicas: 1,
        ..Default::default()
    }
}

/// A started [`TestServer`] with the streams and buckets provisioned
/// ([`jetstream_config`]), and a client connected to it.
pub async fn provisioned() -> (TestServer, async_nats::Client) {
    let server = TestServer::start();
    let client = server.client().await;
    let js = async_nats::jetstream::new(client.clone());
    switchyard::nats::provision(&js, &jetstream_config())
        .await
        .expect("provision");
    (server, client)
}

/// `component` running under a [`Supervisor`] on its own connection to `server`, with
/// [`jetstream_config`].
pub async fn supervise(server: &TestServer, component: Box<dyn Component>) -> Supervisor {
    let name = component.name();
    let client = server.client().await;
    Supervisor::start(
        client,
        vec![component],
        Readiness::default(),
        jetstream_config(),
    )
    .await
    .unwrap_or_else(|err| panic!("start component {name}: {err}"))
}

/// Every service lifecycle event (`events.sys.service.>`) stored in stream EVENTS so
/// far, in order, read with an ordered consumer. Callers filter what they look at.
pub async fn lifecycle_events(client: &async_nats::Client) -> Vec<Envelope<ServiceLifecycle>> {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("EVENTS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "events.sys.service.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending as usize;
    let mut messages = consumer.messages().await.unwrap().take(pending);
    let mut events = Vec::new();
    while let Some(Ok(message)) = messages.next().await {
        let event: Envelope<ServiceLifecycle> =
            Envelope::decode(message.headers.as_ref(), &message.payload, "").unwrap();
        events.push(event);
    }
    events
}

/// A healthy registry entry for `instance` of `service` (version 1.2.3, metadata
/// `team=agents`) with one operation, `say` on `svc.<service>.say` in queue group `q`.
pub fn registry_entry(service: &str, instance: &str) -> RegistryEntry {
    RegistryEntry {
        name: service.into(),
        version: "1.2.3".into(),
        instance: instance.into(),
        description: "test service".into(),
        endpoints: vec![EndpointEntry {
            name: "say".into(),
            subject: format!("svc.{service}.say"),
            queue_group: "q".into(),
        }],
        metadata: BTreeMap::from([("team".to_string(), "agents".to_string())]),
        host: "test-host".into(),
        pid: std::process::id(),
        started: "2026-11-24T00:00:00Z".into(),
        last_heartbeat: String::new(),
        heartbeat_ms: 0,
        health: Health::Healthy,
    }
}

/// Runs the real `nats` CLI against `url` (`nats -s <url> <args>`): its stdout, or its
/// stderr when it fails. A missing CLI is a failure (run scripts/setup), never a skip.
pub fn try_nats_cli(url: &str, args: &[&str]) -> Result<String, String> {
    let nats = switchyard::nats::embedded::find_tool("nats", None)
        .expect("the nats CLI (run scripts/setup)");
    let output = Command::new(nats)
        .arg("-s")
        .arg(url)
        .args(args)
        .output()
        .expect("run nats");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// [`try_nats_cli`] that must succeed: its stdout; a failure panics with its stderr.
pub fn nats_cli(url: &str, args: &[&str]) -> String {
    try_nats_cli(url, args).unwrap_or_else(|err| panic!("nats {args:?}: {err}"))
}

/// A `switchyard` process started by a test, killed on drop, its output printed when
/// the test failed.
pub struct Process {
    pub child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    pub fn spawn(args: &[&str], cwd: &std::path::Path) -> Process {
        Process::spawn_program(Path::new(env!("CARGO_BIN_EXE_switchyard")), args, cwd)
    }

    /// [`Process::spawn`] with extra environment variables.
    pub fn spawn_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Process {
        Process::spawn_program_with_env(Path::new(env!("CARGO_BIN_EXE_switchyard")), args, cwd, env)
    }

    /// Any program (an example service, say), with the same care as `switchyard`.
    pub fn spawn_program(program: &Path, args: &[&str], cwd: &Path) -> Process {
        Process::spawn_program_with_env(program, args, cwd, &[])
    }

    fn spawn_program_with_env(
        program: &Path,
        args: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
    ) -> Process {
        let dir = tempfile::tempdir().expect("output dir");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env_remove("NATS_URL")
            .env("SWITCHYARD_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Process {
            child: Some(child),
            stdout,
            stderr,
            _dir: dir,
        }
    }

    /// `switchyard run instance` against `url`, with its admin endpoint on a free port.
    pub fn run_instance(url: &str) -> (Process, SocketAddr) {
        Process::run_instance_with_args(url, &[])
    }

    pub fn run_instance_with_args(url: &str, extra: &[&str]) -> (Process, SocketAddr) {
        let admin = free_addr().to_string();
        let mut args = vec!["run", "instance", "--nats", url, "--admin", &admin];
        args.extend_from_slice(extra);
        let process = Process::spawn(&args, &std::env::temp_dir());
        (process, admin.parse().expect("socket address"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    pub fn signal(&self, signal: i32) {
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// Waits for the exit code, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- switchyard stdout ----\n{}\n---- switchyard stderr ----\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }
}

/// Runs `switchyard` to completion: (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str], cwd: &std::path::Path) -> (i32, String, String) {
    run_to_end_with_env(args, cwd, &[])
}

/// [`run_to_end`] with extra environment variables.
pub fn run_to_end_with_env(
    args: &[&str],
    cwd: &std::path::Path,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(cwd)
        .env_remove("NATS_URL")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run switchyard");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A minimal HTTP/1.0 GET: (status, body). `None` when nothing listens.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A minimal HTTP/1.0 POST with a JSON body and extra headers: (status, headers as
/// lower-case `name: value` lines, body). `None` when nothing listens.
pub fn http_post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut request = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    // The server may answer (413) before reading a large body; a failed write is fine.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

/// Polls `check` every 50 ms until it returns `Some`, at most `timeout`. Waiting is
/// bounded so a broken build fails instead of hanging; the bound is generous because
/// the machines are shared and slow, and no test asserts on how long it took.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`eventually`] for checks that await: polls `check` every 50 ms until it returns
/// `Some`, at most `timeout`.
pub async fn eventually_async<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually_async`] that must succeed: the value, or a panic naming `what`.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_async(timeout, check)
        .await
        .unwrap_or_else(|| panic!("{what}: not within {timeout:?}"))
}

/// Whether a process with this pid still exists (and is not a zombie we reaped).
pub fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Field 3 is the state; Z is a zombie, as good as gone.
    !stat.is_empty() && stat.split_whitespace().nth(2) != Some("Z")
}

/// Child processes of `pid` (from /proc).
pub fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The `echo` example as a real program, built once per test binary by cargo
/// (`cargo test` does not build examples for integration tests).
pub fn echo_binary() -> PathBuf {
    example_binary("echo")
}

/// The example `name` (`echo`, `slow`, …) as a real program, built once per test
/// binary by cargo.
pub fn example_binary(name: &str) -> PathBuf {
    static BINARIES: std::sync::Mutex<BTreeMap<String, PathBuf>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut built = BINARIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--example", name, "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(
        output.status.success(),
        "cargo build --example {name} failed"
    );
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("the {name} example's executable"));
    built.insert(name.to_string(), path.clone());
    path
}
