//! Switchyard against a nats-server in operator mode (decentralized JWT auth), logging
//! in with a `.creds` file (`--nats-creds`, `NATS_CREDS`, `[nats] creds`). The operator,
//! accounts and users are minted here (tests/common/nats_jwt.rs) and the server trusts
//! them through a memory resolver. With the user's creds `run` becomes ready, the tools
//! and an SDK service program work; a user of an account the server does not know, or
//! a seed that does not match the JWT, is refused at once with a message naming the
//! file. User/password, token and TLS logins are in tests/external_auth.rs.

mod common;
#[path = "common/nats_jwt.rs"]
mod nats_jwt;
#[path = "common/secured.rs"]
mod secured;

use std::time::Instant;

use common::{Process, eventually};
use nats_jwt::{Account, Operator};
use secured::{SecuredServer, WAIT, run_refused, run_until_ready, tool};

/// A nats-server running `nats/dev.conf` in operator mode: it trusts `operator`, and
/// knows the system account and `accounts` from its memory resolver.
fn operator_server(operator: &Operator, accounts: &[&Account]) -> SecuredServer {
    let system = operator.account("SYS", false);
    let preload: String = std::iter::once(&system)
        .chain(accounts.iter().copied())
        .map(|account| format!("  {}: {}\n", account.public_key(), account.jwt))
        .collect();
    SecuredServer::start(&format!(
        "operator: {}\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n{preload}}}",
        operator.jwt,
        system.public_key()
    ))
}

#[test]
fn run_tools_and_an_sdk_program_log_in_with_a_creds_file() {
    let operator = Operator::new("switchyard-test");
    let account = operator.account("APP", true);
    let server = operator_server(&operator, &[&account]);
    let url = server.url();
    let creds = server.file("app.creds", &account.user("switchyard").creds());

    // Operator mode: without credentials the server lets nobody in, so what follows
    // passes only if the creds file is presented.
    let (stderr, _) = run_refused(&url, &[]);
    assert!(stderr.contains("authorization violation"), "{stderr}");

    // `run` provisions the streams and buckets, in the account's JetStream.
    let (_run, took) = run_until_ready(&url, &["--nats-creds", &creds]);
    eprintln!("creds: ready after {took:?}");

    // The tools, with the nats CLI's variable and with the configuration file.
    let (code, out, err) = tool(&["flows", "ls", "--nats", &url], &[("NATS_CREDS", &creds)]);
    assert_eq!(code, 0, "flows ls with NATS_CREDS: {out}{err}");
    let config = server.file(
        "switchyard.toml",
        &format!("[nats]\nurl = \"{url}\"\ncreds = \"{creds}\"\n"),
    );
    let (code, out, err) = tool(&["flows", "ls", "--config", &config], &[]);
    assert_eq!(code, 0, "flows ls with [nats] creds: {out}{err}");

    // An SDK service program with the flag serves its operation; the request goes
    // through the nats CLI as another user of the same account.
    let caller = server.file("caller.creds", &account.user("caller").creds());
    let program = common::echo_binary();
    let started = Instant::now();
    let echo = Process::spawn_program(
        &program,
        &["--nats", &url, "--nats-creds", &creds],
        &std::env::temp_dir(),
    );
    let reply = eventually(WAIT, || {
        common::try_nats_cli(
            &url,
            &[
                "--creds",
                &caller,
                "req",
                "svc.echo.say",
                "{\"text\":\"hi-creds\"}",
            ],
        )
        .ok()
        .filter(|out| out.contains("hi-creds"))
    });
    assert!(
        reply.is_some(),
        "the echo service never answered: {}",
        echo.stderr()
    );
    eprintln!("creds: echo answered {:?} after start", started.elapsed());
}

#[test]
fn unknown_account_and_wrong_seed_are_refused_naming_the_file() {
    let operator = Operator::new("switchyard-test");
    let account = operator.account("APP", true);
    // Signed by the same operator but never given to the server's resolver.
    let unregistered = operator.account("UNREGISTERED", true);
    let server = operator_server(&operator, &[&account]);
    let url = server.url();

    let stranger = unregistered.user("stranger");
    let user = account.user("switchyard");
    let other = account.user("other");
    let cases = [
        ("unknown account", stranger.creds(), stranger.seed()),
        (
            "seed of another user",
            nats_jwt::creds_file(&user.jwt, &other.seed()),
            other.seed(),
        ),
    ];
    for (case, text, seed) in cases {
        let creds = server.file("bad.creds", &text);
        let (stderr, took) = run_refused(&url, &["--nats-creds", &creds]);
        let said = stderr
            .lines()
            .rfind(|l| l.contains("authorization violation"));
        eprintln!("creds: {case} refused after {took:?}: {said:?}");
        assert!(
            stderr.contains("authorization violation"),
            "{case}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("the credentials file {creds}")),
            "{case}: {stderr}"
        );
        assert!(
            stderr.contains("the seed must be the JWT's user's"),
            "{case}: {stderr}"
        );
        assert!(!stderr.contains(&seed), "{case}: the seed was printed");

        let (code, out, err) = tool(&["flows", "ls", "--nats", &url], &[("NATS_CREDS", &creds)]);
        assert_ne!(code, 0, "{case}: flows ls: {out}");
        assert!(err.contains(&creds), "{case}: {err}");
        assert!(!err.contains(&seed), "{case}: the seed was printed");
    }

    // A damaged file stops the start before any connection (exit 64), naming it.
    let damaged = server.file("damaged.creds", "not a credentials file\n");
    let (code, _, err) = tool(
        &["flows", "ls", "--nats", &url, "--nats-creds", &damaged],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains(&damaged), "{err}");
}
