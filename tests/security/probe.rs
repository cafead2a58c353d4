//! The harness of tests/security.rs: a nats-server started as `up --secure` starts it,
//! and one connection per user that records the permissions violations the server
//! reports to it.

use std::sync::{Arc, Mutex};

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, kv};
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures::StreamExt;
use switchyard::nats::secure::{self, Secrets};
use switchyard::nats::{EmbeddedServer, ServerOptions};

use super::common::{jetstream_config, repo_path, until};
use super::{WAIT, all_users};

/// The server as `up --secure` starts it (nats/dev.conf followed by nats/auth.conf, the
/// passwords in its environment), provisioned by the `provisioner` user.
pub struct SecureServer {
    pub server: EmbeddedServer,
    pub secrets: Secrets,
    _dir: tempfile::TempDir,
}

impl SecureServer {
    pub async fn start() -> SecureServer {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::generate(&all_users()).unwrap();
        let options = ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            config: Some(repo_path("nats/dev.conf")),
            binary: None,
        };
        let server = EmbeddedServer::start_secure(options, secrets.clone())
            .unwrap_or_else(|e| panic!("secure nats-server (run scripts/setup): {e}"));
        let secure = SecureServer {
            server,
            secrets,
            _dir: dir,
        };
        let provisioner = secure.probe(secure::PROVISIONER_USER).await;
        switchyard::nats::provision(&provisioner.js(), &jetstream_config())
            .await
            .expect("the provisioner creates every stream and bucket");
        secure
    }

    pub async fn probe(&self, user: &'static str) -> Probe {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let seen = violations.clone();
        let login = self.secrets.login(user).unwrap();
        let client = login
            .apply(ConnectOptions::new())
            .name(format!("probe-{user}"))
            .event_callback(move |event| {
                let seen = seen.clone();
                async move {
                    if let Event::ServerError(err) = event {
                        seen.lock().unwrap().push(err.to_string());
                    }
                }
            })
            .connect(self.server.url())
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        Probe {
            user,
            client,
            violations,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.server.log_path()).unwrap_or_default()
    }
}

/// One user's connection, with the errors the server sent it.
pub struct Probe {
    pub user: &'static str,
    pub client: Client,
    violations: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    pub fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    pub async fn kv(&self, bucket: &str) -> kv::Store {
        self.js()
            .get_key_value(bucket)
            .await
            .unwrap_or_else(|e| panic!("{} opens bucket {bucket}: {e}", self.user))
    }

    pub async fn reported(&self, what: &str) {
        let user = self.user;
        until(&format!("{user}: {what} refused"), WAIT, || async {
            self.violations()
                .iter()
                .any(|v| v.contains("Permissions Violation") && v.contains(what))
                .then_some(())
        })
        .await;
    }

    pub async fn publish_denied(&self, subject: &str) {
        self.client
            .publish(subject.to_string(), Bytes::new())
            .await
            .unwrap();
        self.reported(&format!("Publish to \"{subject}\"")).await;
    }

    pub async fn subscribe_denied(&self, subject: &str) {
        let _subscription = self.client.subscribe(subject.to_string()).await.unwrap();
        self.reported(&format!("Subscription to \"{subject}\""))
            .await;
    }
}

/// Answers every request on `subject` with `answer` (a responder's grant plus
/// `allow_responses`).
pub async fn respond(probe: &Probe, subject: &'static str, answer: &'static str) {
    let mut requests = probe.client.subscribe(subject).await.unwrap();
    let client = probe.client.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                let _ = client
                    .publish(reply, Bytes::from_static(answer.as_bytes()))
                    .await;
            }
        }
    });
    switchyard::nats::connect::round_trip(&probe.client)
        .await
        .unwrap();
}

pub async fn request(probe: &Probe, subject: &'static str) -> String {
    let reply = tokio::time::timeout(WAIT, probe.client.request(subject, Bytes::new()))
        .await
        .unwrap_or_else(|_| panic!("{} request {subject}: no answer", probe.user))
        .unwrap_or_else(|e| panic!("{} request {subject}: {e}", probe.user));
    String::from_utf8_lossy(&reply.payload).into_owned()
}

pub async fn stored(probe: &Probe, subject: &'static str) -> u64 {
    probe
        .js()
        .publish(subject, Bytes::from_static(b"{}"))
        .await
        .unwrap_or_else(|e| panic!("{} publishes {subject}: {e}", probe.user))
        .await
        .unwrap_or_else(|e| panic!("{} stores {subject}: {e}", probe.user))
        .sequence
}

/// Fetches one message from the durable pull consumer `name` on `stream` and acks it
/// with a confirmed ack.
pub async fn consume(probe: &Probe, stream: &str, name: &str, filter: &str) -> String {
    let config = pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: filter.to_string(),
        ..Default::default()
    };
    let consumer = probe
        .js()
        .create_consumer_on_stream(config, stream)
        .await
        .unwrap_or_else(|e| panic!("{} creates consumer {stream}/{name}: {e}", probe.user));
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(WAIT)
        .messages()
        .await
        .unwrap();
    let message = batch
        .next()
        .await
        .unwrap_or_else(|| panic!("{} got nothing from {stream}/{name}", probe.user))
        .unwrap();
    message
        .double_ack()
        .await
        .unwrap_or_else(|e| panic!("{} acks on {stream}/{name}: {e}", probe.user));
    message.subject.to_string()
}
