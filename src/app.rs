//! What `switchyard up`, `run` and `components` do: wire configuration, the embedded
//! server, the admin endpoint and the components together, and stop them in order.

use std::time::Duration;

use crate::admin::{self, Readiness};
use crate::component::Component;
use crate::component::supervisor::{Connections, Supervisor};
use crate::config::{Config, ConfigError};
use crate::data::cache::CacheComponent;
use crate::demo::Demo;
use crate::error::Error;
use crate::integration::gateway::GatewayComponent;
use crate::integration::registry::RegistryComponent;
use crate::nats::secure::{self, Secrets};
use crate::nats::{self, EmbeddedServer, ServerOptions};
use crate::observability::metrics;
use crate::shutdown::Signals;
use crate::system::instance::InstanceComponent;

/// URL `run` uses when neither `--nats` nor `NATS_URL` is given.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Every component this binary can run, in start order.
pub fn catalog() -> Vec<Box<dyn Component>> {
    vec![
        Box::new(InstanceComponent),
        Box::new(crate::system::coordinator::CoordinatorComponent::default()),
        Box::new(crate::system::monitor::MonitorComponent),
        Box::new(RegistryComponent),
        Box::new(crate::data::flow::FlowComponent),
        Box::new(crate::data::sync::SyncComponent::default()),
        Box::new(crate::resilience::deadletter::DeadLetterComponent),
        Box::new(CacheComponent::default()),
        Box::new(crate::resilience::tasks::TasksComponent),
        Box::new(GatewayComponent::default()),
    ]
}

/// The named components, or a configuration error naming the unknown one.
pub fn select(names: &[String]) -> Result<Vec<Box<dyn Component>>, ConfigError> {
    let known: Vec<&'static str> = catalog().iter().map(|c| c.name()).collect();
    if let Some(unknown) = names.iter().find(|n| !known.contains(&n.as_str())) {
        return Err(ConfigError(format!(
            "unknown component {unknown:?} (known: {})",
            known.join(", ")
        )));
    }
    Ok(catalog()
        .into_iter()
        .filter(|c| names.iter().any(|n| n == c.name()))
        .collect())
}

/// `switchyard components`: each component with its subjects.
pub fn describe_components() -> String {
    let mut out = String::new();
    for component in catalog() {
        out.push_str(component.name());
        out.push('\n');
        for sub in component.subscriptions() {
            let group = sub.queue_group.unwrap_or("(every instance)");
            out.push_str(&format!(
                "  {:<28} queue {:<18} {}\n",
                sub.subject, group, sub.description
            ));
        }
    }
    out
}

/// `switchyard decode`: stdin (one payload) to stdout, MessagePack shown as JSON.
pub fn decode_stdio() -> Result<(), Error> {
    use std::io::{Read, Write};
    let mut payload = Vec::new();
    std::io::stdin()
        .read_to_end(&mut payload)
        .map_err(|e| Error::invalid_input(format!("cannot read stdin: {e}")))?;
    let mut out = std::io::stdout().lock();
    out.write_all(&crate::envelope::to_display_json(&payload))
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| Error::internal(format!("cannot write stdout: {e}")))
}

/// `switchyard up`: everything in one process, on an embedded nats-server unless the
/// configuration names one; with `demo`, the example services of [`crate::demo`] too.
pub async fn up(config: Config, demo: bool) -> Result<(), Error> {
    serve(config, catalog(), true, demo).await
}

/// `switchyard run <component>…`: only those components, against an existing server.
pub async fn run(config: Config, components: Vec<Box<dyn Component>>) -> Result<(), Error> {
    serve(config, components, false, false).await
}

async fn serve(
    config: Config,
    mut components: Vec<Box<dyn Component>>,
    may_embed: bool,
    demo: bool,
) -> Result<(), Error> {
    // Installed first so a signal during start-up is not lost.
    let mut signals = Signals::install();
    let metrics = metrics::install();
    let readiness = Readiness::default();
    let stop_admin = tokio_util::sync::CancellationToken::new();
    // The admin port first: a busy port fails before a server is started for nothing.
    let (admin_addr, admin_task) =
        admin::serve(config.admin, readiness.clone(), metrics, stop_admin.clone()).await?;
    // Components claim their own ports (the gateway's HTTP) before anything starts too.
    for component in &mut components {
        component.configure(&config)?;
    }

    // `up --secure`: a fresh password for every user of nats/auth.conf, handed to the
    // embedded server through its environment and to each component's connection.
    let secrets = match config.embedded.secure && may_embed {
        true => {
            let all: Vec<&'static str> = catalog().iter().map(|c| c.name()).collect();
            Some(Secrets::generate(&secure::users(&all))?)
        }
        false => None,
    };
    let mut embedded = match (&config.nats_url, may_embed) {
        (None, true) => {
            let options = ServerOptions {
                listen: config.embedded.listen,
                data_dir: config.embedded.data_dir.clone(),
                config: config.embedded.config.clone(),
                binary: config.embedded.server_bin.clone(),
            };
            Some(match &secrets {
                Some(secrets) => EmbeddedServer::start_secure(options, secrets.clone())?,
                None => EmbeddedServer::start(options)?,
            })
        }
        _ => None,
    };
    let url = match (&embedded, &config.nats_url) {
        (Some(server), _) => server.url(),
        (None, Some(url)) => url.clone(),
        (None, None) => DEFAULT_NATS_URL.to_string(),
    };
    // Secure mode: the files clients, operators and services connect with (the banner
    // names them; no password is ever printed or logged).
    let credentials = match &secrets {
        Some(secrets) => secure::write_credential_files(&config.embedded.data_dir, &url, secrets)?,
        None => Vec::new(),
    };
    // The login of an external server (`--nats`); an embedded server without
    // `--secure` has no users, so a login configured for elsewhere is not used on it.
    let external_auth = match &embedded {
        None => config.nats_auth.clone(),
        Some(_) => {
            if !config.nats_auth.is_empty() {
                tracing::warn!("NATS login options ignored: they apply to --nats servers only");
            }
            nats::NatsAuth::default()
        }
    };
    let services_auth = match &secrets {
        Some(secrets) => nats::NatsAuth::from_login(secrets.login(secure::SERVICES_USER)?),
        None => external_auth.clone(),
    };
    let connections = match &secrets {
        Some(secrets) => {
            let names: Vec<&'static str> = components.iter().map(|c| c.name()).collect();
            Connections::secure(&url, secrets, &names).await?
        }
        None => Connections::shared(nats::connect_with(&url, "switchyard", &external_auth).await?),
    };
    let provisioner = connections.provisioner.as_ref();
    let js = async_nats::jetstream::new(provisioner.unwrap_or(&connections.process).clone());
    let provisioned = nats::provision(&js, &config.jetstream).await?;
    for (name, change) in &provisioned.changes {
        tracing::debug!(%name, ?change, "provisioned");
    }
    let supervisor =
        Supervisor::start_with(connections, components, readiness, config.jetstream.clone())
            .await?;
    // From here on, logs go to NATS too (logs.<level>.<component>, stream LOGS).
    let ctx = supervisor.context();
    crate::observability::logs::attach(&ctx.client, &ctx.instance.id);
    // Demo services start after the components and stop before them.
    let demo = match demo {
        false => None,
        true => match Demo::start(&url, &services_auth).await {
            Ok(demo) => Some(demo),
            Err(err) => {
                supervisor.stop(config.grace).await;
                return Err(err);
            }
        },
    };
    let ctx = supervisor.context();
    println!(
        "{}",
        banner(
            &url,
            embedded.as_ref(),
            admin_addr,
            ctx,
            demo.as_ref(),
            config.gateway.http,
            &credentials,
        )
    );

    let signal = signals.next().await;
    tracing::info!(signal, grace = ?config.grace, "stopping: finishing in-flight work");
    // A second signal means "now": exit at once (the child dies with us).
    tokio::spawn(async move {
        signals.next().await;
        eprintln!("switchyard: second signal, exiting without waiting");
        std::process::exit(130);
    });
    if let Some(demo) = demo {
        demo.stop().await;
    }
    let report = supervisor.stop(config.grace).await;
    stop_admin.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    if let Some(server) = embedded.as_mut() {
        server.stop(Duration::from_secs(10));
    }
    tracing::info!(
        in_time = report.finished_in_time,
        drained = report.drained,
        "stopped"
    );
    Ok(())
}

fn banner(
    url: &str,
    embedded: Option<&EmbeddedServer>,
    admin: std::net::SocketAddr,
    ctx: &crate::component::Context,
    demo: Option<&Demo>,
    http: std::net::SocketAddr,
    credentials: &[secure::CredentialFiles],
) -> String {
    let server = match embedded {
        Some(s) => format!("embedded nats-server, log {}", s.log_path().display()),
        None => "external server".to_string(),
    };
    // Secure mode: the commands below go through the client's and the operator's
    // credential files (paths only; the passwords stay in the files).
    let context = |user: &str| {
        credentials
            .iter()
            .find(|f| f.user == user)
            .map(|f| format!("nats --context {}", f.context.display()))
    };
    let (nats, admin_nats, echo) =
        match (context(secure::CLIENT_USER), context(secure::OPERATOR_USER)) {
            (Some(client), Some(operator)) => (client, operator, "api.echo.say"),
            _ => (
                format!("nats -s {url}"),
                format!("nats -s {url}"),
                "svc.echo.say",
            ),
        };
    let secure = match credentials.first() {
        Some(files) => format!(
            "\x20 Secure      one NATS user per component (nats/auth.conf); credentials for \
             {} in {} (<user>.json: nats --context, <user>.env: NATS_USER/NATS_PASSWORD)\n",
            credentials
                .iter()
                .map(|f| f.user)
                .collect::<Vec<_>>()
                .join(", "),
            files.context.parent().unwrap_or(&files.context).display()
        ),
        None => String::new(),
    };
    let components = ctx.instance.components.join(", ");
    let http = match ctx.instance.components.contains(&"gateway") {
        true => format!(
            "\x20 HTTP        http://{http}  (POST /v1/<service>/<operation>, GET /v1/services)\n"
        ),
        false => String::new(),
    };
    let demo = demo.map_or_else(String::new, |demo| {
        format!(
            "\x20 {admin_nats} micro ls   # demo services: {}\n\
             \x20 {nats} req {echo} '{{\"text\":\"hi\"}}'\n\
             \x20 {nats} req tasks.submit.slow.wait '{{\"ms\":100}}'   # a durable task\n",
            demo.names().join(", ")
        )
    });
    format!(
        "Switchyard {version} is up (instance {id})\n\
         \x20 NATS        {url}  ({server})\n\
         \x20 Admin       http://{admin}  (/healthz /readyz /metrics)\n\
         {http}{secure}\x20 Components  {components}\n\
         Try:\n\
         \x20 {admin_nats} stream ls\n\
         \x20 {admin_nats} kv ls\n\
         \x20 {nats} req sys.echo '{{\"hello\":\"world\"}}'\n\
         \x20 {nats} req sys.ping '' --replies 0\n\
         \x20 curl -s http://{admin}/readyz\n\
         {demo}Ctrl-C stops gracefully.",
        version = ctx.instance.version,
        id = ctx.instance.id,
    )
}
