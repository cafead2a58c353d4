//! The `switchyard` binary: parse, configure, wire. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use switchyard::cli::{ApiKeyCommand, Cli, Command, EventsCommand};
use switchyard::config::{Config, ConfigError, EXIT_CONFIG};
use switchyard::integration::{bus, gateway};
use switchyard::{app, bench, observability};

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => return config_error(&ConfigError(first_line(&err.to_string()))),
    };
    // `flows` prints one result or one error line; connection logs would bury it.
    if matches!(
        cli.command,
        Command::Flows(_)
            | Command::Dlq(_)
            | Command::Status(_)
            | Command::Logs(_)
            | Command::LogLevel(_)
    ) && cli.global.log.is_none()
    {
        cli.global.log = Some("warn".into());
    }
    // Before the configuration is read: a key is what a configuration that requires
    // keys but has none yet (refused below) needs.
    if let Command::ApiKey(ApiKeyCommand::New(args)) = &cli.command {
        let made = gateway::api_keys::new_key_text(&args.name, args.rate, args.burst);
        return match made {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => config_error(&ConfigError(err.message().to_string())),
        };
    }
    let up_args = match &cli.command {
        Command::Up(args) => Some(args),
        Command::Bench(args) => Some(&args.server),
        _ => None,
    };
    let config = match Config::load(&cli.global, up_args) {
        Ok(config) => config,
        Err(err) => return config_error(&err),
    };
    observability::logging::init(&config.log_filter, config.log_format);

    let result = match cli.command {
        Command::Up(args) => app::up(config, args.demo).await,
        Command::Run(args) => match app::select(&args.components) {
            Ok(components) => app::run(config, components).await,
            Err(err) => return config_error(&err),
        },
        Command::Components => {
            print!("{}", app::describe_components());
            Ok(())
        }
        Command::Bench(args) => bench::run(config, args).await,
        Command::Decode => app::decode_stdio(),
        Command::Events(EventsCommand::Tail(args)) => bus::tail::run(config, args).await,
        Command::Flows(command) => switchyard::data::flow::cli::run(config, command).await,
        Command::Dlq(command) => {
            switchyard::resilience::deadletter::cli::run(config, command).await
        }
        Command::Status(args) => switchyard::system::monitor::cli(config, args.json).await,
        Command::Logs(args) => observability::logs_cli::logs(config, args).await,
        Command::LogLevel(args) => observability::logs_cli::log_level(config, args).await,
        Command::ApiKey(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("switchyard: {}", err.message());
            ExitCode::FAILURE
        }
    }
}

fn config_error(err: &ConfigError) -> ExitCode {
    eprintln!("switchyard: {err}");
    ExitCode::from(EXIT_CONFIG as u8)
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or(text)
        .trim_start_matches("error: ")
        .to_string()
}
