//! Switchyard against a secured external nats-server (`--nats` with a login): a real
//! server with users and passwords, one with a token and one with TLS from a CA made in
//! the test (openssl). With the right login `run` becomes ready, the tools and an SDK
//! service program work; with a wrong one, or none, each exits non-zero with a clear
//! message instead of hanging. Credentials files (JWT + nkey seed) are tested against a
//! server in operator mode in tests/external_creds.rs.

mod common;
#[path = "common/secured.rs"]
mod secured;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Process, eventually, free_addr, http_get};
use secured::{SecuredServer, WAIT, run_refused, run_until_ready, tool};

const PASSWORD: &str = "pw-of-alice-7f3a";
const TOKEN: &str = "tok-9c1e5b";

#[test]
fn user_and_password() {
    let server = SecuredServer::start(&format!(
        "authorization {{\n  users = [ {{ user: alice, password: \"{PASSWORD}\" }} ]\n}}"
    ));
    let url = server.url();
    let right = server.file("password", &format!("{PASSWORD}\n"));
    let wrong = server.file("wrong", "not-the-password\n");

    let (_run, took) = run_until_ready(
        &url,
        &["--nats-user", "alice", "--nats-password-file", &right],
    );
    eprintln!("user/password: ready after {took:?}");

    // The tools read the nats CLI's variables.
    let (code, out, err) = tool(
        &["flows", "ls", "--nats", &url],
        &[("NATS_USER", "alice"), ("NATS_PASSWORD", PASSWORD)],
    );
    assert_eq!(code, 0, "flows ls: {out}{err}");

    // An SDK service program with the same flags serves its operation.
    let program = common::echo_binary();
    let _echo = Process::spawn_program(
        &program,
        &[
            "--nats",
            &url,
            "--nats-user",
            "alice",
            "--nats-password-file",
            &right,
        ],
        &std::env::temp_dir(),
    );
    let reply = eventually(WAIT, || {
        common::try_nats_cli(
            &url,
            &[
                "--user",
                "alice",
                "--password",
                PASSWORD,
                "req",
                "svc.echo.say",
                "{\"text\":\"hi\"}",
            ],
        )
        .ok()
        .filter(|out| out.contains("hi"))
    });
    assert!(reply.is_some(), "the echo service never answered");

    // A wrong password and no login at all: refused at once, saying what to check.
    for login in [
        vec![
            "--nats-user",
            "alice",
            "--nats-password-file",
            wrong.as_str(),
        ],
        vec![],
    ] {
        let (stderr, took) = run_refused(&url, &login);
        eprintln!("user/password {login:?}: refused after {took:?}");
        assert!(stderr.contains("authorization violation"), "{stderr}");
        assert!(stderr.contains("NATS_USER"), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    let (code, _, err) = tool(
        &["flows", "ls", "--nats", &url],
        &[("NATS_USER", "alice"), ("NATS_PASSWORD", "nope")],
    );
    assert_ne!(code, 0);
    assert!(err.contains("authorization violation"), "{err}");
    assert!(err.contains("user \"alice\""), "{err}");
}

#[test]
fn token() {
    let server = SecuredServer::start(&format!("authorization {{ token: \"{TOKEN}\" }}"));
    let url = server.url();
    let token_file = server.file("token", TOKEN);
    let (_run, took) = run_until_ready(&url, &["--nats-token-file", &token_file]);
    eprintln!("token: ready after {took:?}");

    // The token from the environment, and from the `[nats]` section of a config file.
    let (code, out, err) = tool(&["flows", "ls", "--nats", &url], &[("NATS_TOKEN", TOKEN)]);
    assert_eq!(code, 0, "flows ls with NATS_TOKEN: {out}{err}");
    let config = server.file(
        "switchyard.toml",
        &format!("[nats]\nurl = \"{url}\"\ntoken_file = \"{token_file}\"\n"),
    );
    let (code, out, err) = tool(&["flows", "ls", "--config", &config], &[]);
    assert_eq!(code, 0, "flows ls with [nats] token_file: {out}{err}");

    let wrong = server.file("wrong", "tok-wrong");
    let (stderr, took) = run_refused(&url, &["--nats-token-file", &wrong]);
    eprintln!("token: wrong one refused after {took:?}");
    assert!(stderr.contains("authorization violation"), "{stderr}");
    assert!(stderr.contains("the token"), "{stderr}");
    assert!(!stderr.contains("tok-wrong"), "{stderr}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Switchyard test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server-key.pem"),
    )
}

#[test]
fn tls_with_the_servers_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(certs.path());
    let server = SecuredServer::start(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}",
        cert.display(),
        key.display()
    ));
    let url = format!("tls://{}", server.listen());
    let ca = ca.display().to_string();
    let (_run, took) = run_until_ready(&url, &["--nats-tls-ca", &ca]);
    eprintln!("tls: ready after {took:?}");
    let (code, out, err) = tool(&["flows", "ls", "--nats", &url], &[("NATS_CA", &ca)]);
    assert_eq!(code, 0, "flows ls with NATS_CA: {out}{err}");

    // Without the CA the server's certificate is not trusted: a clear TLS error.
    let (stderr, took) = run_refused(&url, &[]);
    eprintln!("tls: without the CA refused after {took:?}");
    assert!(stderr.contains("TLS"), "{stderr}");
    assert!(stderr.contains("--nats-tls-ca"), "{stderr}");
    // A certificate without its key is refused before any connection (exit 64).
    let (code, _, err) = tool(
        &[
            "flows",
            "ls",
            "--nats",
            &url,
            "--nats-tls-cert",
            &cert.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--nats-tls-key"), "{err}");
}

/// `up` on its embedded server ignores a login meant for an external one (a shell that
/// sourced an earlier `up --secure`'s `operator.env` has `NATS_USER` set), and says so.
#[test]
fn an_embedded_server_ignores_an_external_login() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, nats, http) = (free_addr(), free_addr(), free_addr());
    let data = dir.path().join("state").display().to_string();
    let up = Process::spawn_with_env(
        &[
            "up",
            "--admin",
            &admin.to_string(),
            "--nats-listen",
            &nats.to_string(),
            "--http",
            &http.to_string(),
            "--data-dir",
            &data,
        ],
        dir.path(),
        &[
            ("NATS_USER", "operator"),
            ("NATS_PASSWORD", "from-an-old-run"),
        ],
    );
    let ready = eventually(WAIT, || {
        http_get(admin, "/readyz").filter(|(status, _)| *status == 200)
    });
    assert!(
        ready.is_some(),
        "not ready within {WAIT:?}: {}",
        up.stderr()
    );
    let warned = eventually(WAIT, || {
        up.stderr()
            .contains("NATS login options ignored")
            .then_some(())
    });
    assert!(warned.is_some(), "{}", up.stderr());
    assert!(!up.stderr().contains("from-an-old-run"), "{}", up.stderr());
}
