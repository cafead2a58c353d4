//! Command-line interface: every flag has a `SWITCHYARD_*` (or `NATS_URL`) env fallback;
//! values not given on either come from the optional TOML file, then defaults
//! (see [`crate::config`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "The integration layer agentic workflows run on, built on NATS"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Default)]
pub struct GlobalArgs {
    /// Optional TOML configuration file; flags and env vars override it.
    #[arg(long, env = "SWITCHYARD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// NATS server to use (several URLs of a cluster: comma-separated). Without it, `up`
    /// starts its own nats-server. To log in to it, see the --nats-* options below.
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats: Option<String>,
    /// Admin HTTP address (/healthz, /readyz, /metrics) [default: 127.0.0.1:9464].
    #[arg(long, env = "SWITCHYARD_ADMIN", global = true)]
    pub admin: Option<SocketAddr>,
    /// Log filter in tracing's EnvFilter syntax [default: info].
    #[arg(long, env = "SWITCHYARD_LOG", global = true)]
    pub log: Option<String>,
    /// Log output format [default: text].
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Time in-flight work gets to finish on SIGINT/SIGTERM [default: 10s].
    #[arg(long, env = "SWITCHYARD_GRACE", global = true, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// Gateway HTTP ingress address (POST /v1/<service>/<operation>, GET /v1/services)
    /// [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHYARD_HTTP", global = true)]
    pub http: Option<SocketAddr>,
    /// Gateway timeout for services without a policy in KV `policies` [default: 5s].
    #[arg(long, env = "SWITCHYARD_GATEWAY_TIMEOUT", global = true, value_parser = parse_duration)]
    pub gateway_timeout: Option<Duration>,
    /// Requests the gateway forwards at once; more are answered 429 overloaded at once
    /// [default: 1024].
    #[arg(long, env = "SWITCHYARD_GATEWAY_MAX_IN_FLIGHT", global = true)]
    pub gateway_max_in_flight: Option<usize>,
    /// HTTP callers of the gateway must present an API key (`--require-api-key` or
    /// `=true|false`); keys are required anyway once any is configured [default: false].
    #[arg(long, env = "SWITCHYARD_REQUIRE_API_KEY", global = true, num_args = 0..=1,
          default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub require_api_key: Option<bool>,
    /// File of gateway API keys, one `name sha256 [rate [burst]]` per line (see
    /// `switchyard api-key new`).
    #[arg(long, env = "SWITCHYARD_API_KEYS_FILE", global = true)]
    pub api_keys_file: Option<PathBuf>,
    /// How to log in to an external NATS server (creds, user, token, TLS).
    #[command(flatten)]
    pub nats_login: crate::nats::auth::NatsLoginArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process, on an embedded nats-server unless --nats is given.
    Up(UpArgs),
    /// Run only the named components against an existing server (scale-out).
    Run(RunArgs),
    /// List the components with the subjects each one serves.
    Components,
    /// Measure the raw-NATS baselines every Switchyard path is compared to, or (`bench
    /// gateway`) the API gateway against the bare relay and a direct request.
    Bench(BenchArgs),
    /// Print a MessagePack payload from stdin as JSON (for `nats sub --translate`);
    /// JSON and other text pass through unchanged.
    Decode,
    /// The event bus (stream EVENTS).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Data flow rules in KV bucket `flows` (applied live by every instance).
    #[command(subcommand)]
    Flows(FlowsCommand),
    /// Dead letters in stream DLQ: list, show, replay to their original subject, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The system's status (sys.status): services and their health, micro STATS,
    /// streams and consumers, DLQ depth, the coordinator leader.
    Status(StatusArgs),
    /// Logs of every instance from stream LOGS (logs.<level>.<component>).
    Logs(crate::observability::logs_cli::LogsArgs),
    /// Ask every instance for its log filter, or change it at once (`sync=debug,info`).
    LogLevel(crate::observability::logs_cli::LogLevelArgs),
    /// API keys of the gateway's HTTP ingress.
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Print a fresh random key once (Switchyard keeps only its SHA-256) and the
    /// configuration entry with its hash.
    New(ApiKeyNewArgs),
}

#[derive(Debug, Args)]
pub struct ApiKeyNewArgs {
    /// The key's name: in metrics, logs and `Switchyard-Api-Key-Name`, never the key.
    pub name: String,
    /// Requests per second [default: 100].
    #[arg(long)]
    pub rate: Option<u32>,
    /// Requests at once above the rate [default: the rate].
    #[arg(long)]
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Print the JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: seq, time, original subject, component/consumer, deliveries,
    /// reason.
    Ls(DlqLsArgs),
    /// Print one dead letter: its headers and its payload as readable JSON.
    Show(DlqShowArgs),
    /// Publish dead letters again to their original subject (fresh ids, a header
    /// linking the entry); the entries stay until purged.
    Replay(DlqReplayArgs),
    /// Delete dead letters.
    Purge(DlqPurgeArgs),
}

/// Which dead letters: a pattern on the original subject and a time window.
#[derive(Debug, Args, Default)]
pub struct DlqFilterArgs {
    /// Original subject pattern, NATS wildcards (`orders.*`, `data.in.>`, `>` for all).
    #[arg(long, value_name = "PATTERN")]
    pub subject: Option<String>,
    /// Stored at or after: a duration ago (`10m`, `2h`) or an RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Stored at or before: a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
}

#[derive(Debug, Args)]
pub struct DlqLsArgs {
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DlqShowArgs {
    /// The entry's sequence in stream DLQ (first column of `dlq ls`).
    pub seq: u64,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// Sequences of the entries; without them, the filters select.
    pub seqs: Vec<u64>,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Say what would be replayed, publish nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    /// Sequences of the entries; without them, the filters select.
    pub seqs: Vec<u64>,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Delete without asking (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// List the rules: name, enabled, subject pattern, targets, key, revision, updated.
    Ls(FlowsLsArgs),
    /// Print one rule as stored (JSON).
    Get(FlowNameArgs),
    /// Check a rule file (.json or .toml) and write it under its name.
    Put(FlowsPutArgs),
    /// Remove a rule (its history stays, for records stored while it was in force).
    Rm(FlowNameArgs),
}

#[derive(Debug, Args)]
pub struct FlowsLsArgs {
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FlowNameArgs {
    /// The rule's name (its key in bucket `flows`).
    pub name: String,
}

#[derive(Debug, Args)]
pub struct FlowsPutArgs {
    /// Rule file: JSON or TOML (by extension; otherwise JSON is tried, then TOML).
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Print events as JSON lines, one per event: those since --since, then new ones
    /// until Ctrl-C (or until caught up with --no-follow).
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Start with the events stored this long ago.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub since: Duration,
    /// Only events whose ce-type matches; `*` matches any run of characters, dots
    /// included (`io.switchyard.sys.service.*`). Filtered here, not by the server.
    #[arg(long = "type", value_name = "PATTERN")]
    pub type_pattern: Option<String>,
    /// Subject filter applied by the server, under events. (`events.sys.>`).
    #[arg(long, value_name = "SUBJECT", default_value = "events.>")]
    pub subject: String,
    /// Stop once caught up instead of following new events.
    #[arg(long)]
    pub no_follow: bool,
}

#[derive(Debug, Args, Default)]
pub struct UpArgs {
    /// Listen address of the embedded nats-server [default: 127.0.0.1:4222].
    #[arg(long, env = "SWITCHYARD_NATS_LISTEN")]
    pub nats_listen: Option<SocketAddr>,
    /// Working state (JetStream store, server log) [default: .switchyard].
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// nats-server configuration [default: nats/dev.conf, else the built-in copy].
    #[arg(long, env = "SWITCHYARD_NATS_CONFIG")]
    pub nats_config: Option<PathBuf>,
    /// nats-server binary [default: found in GOBIN, GOPATH/bin, ~/go/bin, then PATH].
    #[arg(long, env = "SWITCHYARD_NATS_SERVER")]
    pub nats_server: Option<PathBuf>,
    /// Also run the example services echo, flaky and slow (`up` only).
    #[arg(long, env = "SWITCHYARD_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,
    /// Least-privilege NATS access (`up` only): the embedded server runs with
    /// nats/auth.conf, each component connects as its own user with a fresh password,
    /// clients' credentials are written under <data dir>/secure/; also requires gateway
    /// API keys unless --require-api-key=false.
    #[arg(long, env = "SWITCHYARD_SECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub secure: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Components to run (see `switchyard components`).
    #[arg(required = true)]
    pub components: Vec<String>,
}

/// What `switchyard bench` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum BenchSuite {
    /// The raw-NATS baselines: request-reply, bare relay, JetStream, KV.
    #[default]
    Baseline,
    /// The API gateway, the bare relay and a direct request to the echo service, in
    /// one run, as ratios (uses its own server or --nats: a dedicated one, since the
    /// gateway joins queue group `switchyard` on `api.>`).
    Gateway,
    /// The data cache in process: the memory hit path (`get_local`, `get`), the
    /// read-through and the write-through, each call timed.
    Cache,
    /// Data flow and sync from publish to the target's answer, against the thinnest
    /// hand-written pipeline (publish with ack, one pull consumer, one request per
    /// record) and that pipeline plus a status in KV and a confirmation per record, in
    /// the same run, plus the cache hit path.
    Sync,
    /// Durable tasks from submit to the result, against the thinnest hand-written
    /// work queue (publish with ack to a work-queue stream, one pull consumer running
    /// the same handler, ack, result published) and that queue plus the least the
    /// contract adds per task (a submit reply, two states in KV), in the same run.
    Tasks,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value_t = BenchSuite::Baseline)]
    pub suite: BenchSuite,
    /// Print one JSON document instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
    /// How long each scenario runs.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Gateway suite: measure every cell this many times (the relay and the gateway
    /// alternating which goes first) and check the targets on the medians.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Skip the `nats bench` reference runs (the gateway suite has none).
    #[arg(long)]
    pub no_nats_cli: bool,
    #[command(flatten)]
    pub server: UpArgs,
}

pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("{e} (examples: 500ms, 10s, 7d)"))
}

/// Rows as left-aligned columns two spaces apart, for the tools' tables (`flows ls`,
/// `dlq ls`).
pub fn text_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
