//! Tests of the external NATS login: precedence, refused combinations, redaction.

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn resolve(flags: NatsLoginArgs, file: NatsSection, env: SecretEnv) -> Result<NatsAuth, Error> {
    NatsAuth::resolve(&flags, &file, env)
}

#[test]
fn nothing_given_is_no_login() {
    let auth = resolve(
        NatsLoginArgs::default(),
        NatsSection::default(),
        SecretEnv::default(),
    )
    .unwrap();
    assert!(auth.is_empty());
    assert_eq!(auth.presented(), "no credentials");
}

#[test]
fn password_comes_from_its_file_flag_then_env_then_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let flag_file = write(dir.path(), "flag", "from-flag-file\n");
    let conf_file = write(dir.path(), "conf", "from-config-file");
    let env = || SecretEnv {
        password: Some("from-env".into()),
        token: None,
    };
    let file = NatsSection {
        user: Some("alice".into()),
        password_file: Some(conf_file),
        ..NatsSection::default()
    };
    let flags = NatsLoginArgs {
        password_file: Some(flag_file),
        ..NatsLoginArgs::default()
    };
    let auth = resolve(flags, file.clone(), env()).unwrap();
    assert_eq!(auth.password.as_deref(), Some("from-flag-file"));
    assert_eq!(auth.user.as_deref(), Some("alice"));
    let auth = resolve(NatsLoginArgs::default(), file.clone(), env()).unwrap();
    assert_eq!(auth.password.as_deref(), Some("from-env"));
    let auth = resolve(NatsLoginArgs::default(), file, SecretEnv::default()).unwrap();
    assert_eq!(auth.password.as_deref(), Some("from-config-file"));
}

#[test]
fn debug_never_shows_a_secret() {
    let auth = resolve(
        NatsLoginArgs {
            user: Some("alice".into()),
            ..NatsLoginArgs::default()
        },
        NatsSection::default(),
        SecretEnv {
            password: Some("hunter2-secret".into()),
            token: None,
        },
    )
    .unwrap();
    let shown = format!("{auth:?} {}", auth.presented());
    assert!(!shown.contains("hunter2-secret"), "{shown}");
    assert!(
        shown.contains("alice") && shown.contains("<redacted>"),
        "{shown}"
    );
    let token = resolve(
        NatsLoginArgs::default(),
        NatsSection::default(),
        SecretEnv {
            password: None,
            token: Some("tok-secret".into()),
        },
    )
    .unwrap();
    assert!(!format!("{token:?}").contains("tok-secret"));
}

#[test]
fn refused_combinations_name_their_option() {
    let dir = tempfile::tempdir().unwrap();
    let pem = write(dir.path(), "cert.pem", "-----BEGIN CERTIFICATE-----\nx\n");
    let cases: Vec<(NatsLoginArgs, SecretEnv, &str)> = vec![
        (
            NatsLoginArgs {
                user: Some("alice".into()),
                ..Default::default()
            },
            SecretEnv::default(),
            "needs a password",
        ),
        (
            NatsLoginArgs::default(),
            SecretEnv {
                password: Some("p".into()),
                token: None,
            },
            "needs a user",
        ),
        (
            NatsLoginArgs {
                user: Some("alice".into()),
                ..Default::default()
            },
            SecretEnv {
                password: Some("p".into()),
                token: Some("t".into()),
            },
            "one way to log in",
        ),
        (
            NatsLoginArgs {
                tls_cert: Some(pem.clone()),
                ..Default::default()
            },
            SecretEnv::default(),
            "--nats-tls-key",
        ),
        (
            NatsLoginArgs {
                creds: Some(dir.path().join("missing.creds")),
                ..Default::default()
            },
            SecretEnv::default(),
            "cannot read --nats-creds",
        ),
        (
            NatsLoginArgs {
                creds: Some(pem.clone()),
                ..Default::default()
            },
            SecretEnv::default(),
            "not a NATS credentials file",
        ),
        (
            NatsLoginArgs {
                tls_ca: Some(write(dir.path(), "ca.txt", "not pem")),
                ..Default::default()
            },
            SecretEnv::default(),
            "--nats-tls-ca (NATS_CA)",
        ),
        (
            NatsLoginArgs {
                token_file: Some(write(dir.path(), "empty", "\n")),
                ..Default::default()
            },
            SecretEnv::default(),
            "--nats-token-file",
        ),
        (
            NatsLoginArgs {
                inbox_prefix: Some("_INBOX.>".into()),
                ..Default::default()
            },
            SecretEnv::default(),
            "--nats-inbox-prefix",
        ),
    ];
    for (flags, env, expected) in cases {
        let err = resolve(flags, NatsSection::default(), env).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        assert!(err.message().contains(expected), "{expected}: {err}");
    }
}

#[test]
fn users_of_auth_conf_keep_their_inbox_others_get_the_usual_one() {
    let login = |user: &str| {
        resolve(
            NatsLoginArgs {
                user: Some(user.into()),
                ..Default::default()
            },
            NatsSection::default(),
            SecretEnv {
                password: Some("p".into()),
                token: None,
            },
        )
        .unwrap()
    };
    assert_eq!(
        login("services").effective_inbox_prefix().as_deref(),
        Some("_INBOX_services")
    );
    assert_eq!(login("operator").effective_inbox_prefix(), None);
    assert_eq!(login("alice").effective_inbox_prefix(), None);
}

#[test]
fn the_file_key_is_a_url_or_a_table() {
    #[derive(Deserialize)]
    struct Doc {
        nats: NatsKey,
    }
    let url: Doc = toml::from_str("nats = \"nats://a:4222\"").unwrap();
    assert_eq!(url.nats.0.url.as_deref(), Some("nats://a:4222"));
    let table: Doc =
        toml::from_str("[nats]\nurl = \"tls://b:4222\"\nuser = \"alice\"\ntls_ca = \"/ca.pem\"")
            .unwrap();
    assert_eq!(table.nats.0.user.as_deref(), Some("alice"));
    assert_eq!(table.nats.0.tls_ca, Some(PathBuf::from("/ca.pem")));
    let err = toml::from_str::<Doc>("[nats]\npassword = \"inline\"")
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("unknown field `password`"),
        "{err}"
    );
}
