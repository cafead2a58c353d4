//! Logging in to an external NATS server or cluster (`--nats`): one description of how
//! to authenticate — a credentials file, a user and password, or a token, and TLS — used
//! by every connection Switchyard opens to it: `up`/`run`, the tools (`flows`, `dlq`,
//! `status`, `logs`, `events tail`…) and SDK service programs.
//!
//! It comes from flags, their env vars (the `nats` CLI's names: `NATS_CREDS`,
//! `NATS_USER`, `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_CA`, `NATS_CERT`, `NATS_KEY`) and
//! the `[nats]` section of the configuration file, in that order. Secrets (password,
//! token) come from the environment or from a file only, never from a flag (a flag shows
//! in `ps`), and [`NatsAuth`]'s `Debug` hides them. Every file named is read and checked
//! when the process starts, so a typo is an [`ErrorKind::InvalidInput`] naming the
//! option rather than a failure at the first connection.
//!
//! A login is for an external server only. The embedded server of `up` has no users,
//! or with `--secure` its own generated ones ([`super::secure`]), so `up` on it ignores
//! a login with a warning: a shell that sourced the `operator.env` of an earlier
//! `up --secure` (which sets `NATS_USER`) must still be able to start it again.

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;
use serde::Deserialize;

use super::secure::{self, Login};
use crate::error::{Error, ErrorKind};

/// How to log in to an external server. The default is no login at all.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A `.creds` file: the user's JWT and nkey seed (decentralized auth, `nsc`).
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    /// CA certificates (PEM) to trust the server's certificate with.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where replies arrive; `None` means the usual `_INBOX`, or for a user of
    /// `nats/auth.conf` that user's own prefix ([`secure::inbox_prefix`]).
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsAuth")
            .field("creds", &self.creds)
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

/// The flags (each with its env var). Flattened into [`crate::cli::GlobalArgs`] and
/// [`crate::sdk::ServiceArgs`].
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Logging in to an external NATS server (--nats)")]
pub struct NatsLoginArgs {
    /// NATS credentials file (user JWT and nkey seed, `.creds`).
    #[arg(
        long = "nats-creds",
        env = "NATS_CREDS",
        global = true,
        value_name = "FILE"
    )]
    pub creds: Option<PathBuf>,
    /// NATS user; its password comes from NATS_PASSWORD or --nats-password-file (never
    /// a flag).
    #[arg(long = "nats-user", env = "NATS_USER", global = true)]
    pub user: Option<String>,
    /// File holding the NATS password (else NATS_PASSWORD).
    #[arg(
        long = "nats-password-file",
        env = "SWITCHYARD_NATS_PASSWORD_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// File holding the NATS token (else NATS_TOKEN).
    #[arg(
        long = "nats-token-file",
        env = "SWITCHYARD_NATS_TOKEN_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// CA certificates (PEM) the NATS server's certificate is checked against; implies
    /// TLS.
    #[arg(
        long = "nats-tls-ca",
        env = "NATS_CA",
        global = true,
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for TLS; needs --nats-tls-key.
    #[arg(
        long = "nats-tls-cert",
        env = "NATS_CERT",
        global = true,
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(
        long = "nats-tls-key",
        env = "NATS_KEY",
        global = true,
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,
    /// Prefix of reply subjects, when the server's permissions want another than
    /// `_INBOX`.
    #[arg(
        long = "nats-inbox-prefix",
        env = "SWITCHYARD_NATS_INBOX_PREFIX",
        global = true
    )]
    pub inbox_prefix: Option<String>,
}

/// The `[nats]` section of the configuration file. `nats = "<url>"` alone still works
/// (see [`NatsKey`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    pub url: Option<String>,
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub inbox_prefix: Option<String>,
}

/// The file's `nats` key: a URL string (as before) or a `[nats]` table. Written by
/// hand so that a wrong key in the table keeps serde's "unknown field" message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NatsKey(pub NatsSection);

impl<'de> Deserialize<'de> for NatsKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NatsKey;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a NATS URL or a [nats] table")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<NatsKey, E> {
                Ok(NatsKey(NatsSection {
                    url: Some(url.to_string()),
                    ..NatsSection::default()
                }))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<NatsKey, A::Error> {
                let section =
                    NatsSection::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(NatsKey(section))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The secrets' environment variables, read by the caller (tests pass their own).
#[derive(Default)]
pub struct SecretEnv {
    pub password: Option<String>,
    pub token: Option<String>,
}

impl SecretEnv {
    /// `NATS_PASSWORD` and `NATS_TOKEN` (empty counts as unset).
    pub fn from_process() -> SecretEnv {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        SecretEnv {
            password: var("NATS_PASSWORD"),
            token: var("NATS_TOKEN"),
        }
    }
}

impl NatsAuth {
    /// Flags (and their env vars) over the file's section; a secret from its flag's file,
    /// else its env var, else the file's `*_file`. Checked ([`NatsAuth::check`]).
    pub fn resolve(
        flags: &NatsLoginArgs,
        file: &NatsSection,
        env: SecretEnv,
    ) -> Result<NatsAuth, Error> {
        let secret = |option: &str,
                      flag: &Option<PathBuf>,
                      var: Option<String>,
                      key: &Option<PathBuf>| match (flag, var, key) {
            (Some(path), _, _) => read_secret(option, path).map(Some),
            (None, Some(value), _) => Ok(Some(value)),
            (None, None, Some(path)) => read_secret(option, path).map(Some),
            (None, None, None) => Ok(None),
        };
        let or = |a: &Option<PathBuf>, b: &Option<PathBuf>| a.clone().or_else(|| b.clone());
        let auth = NatsAuth {
            creds: or(&flags.creds, &file.creds),
            user: flags.user.clone().or_else(|| file.user.clone()),
            password: secret(
                "--nats-password-file (nats.password_file)",
                &flags.password_file,
                env.password,
                &file.password_file,
            )?,
            token: secret(
                "--nats-token-file (nats.token_file)",
                &flags.token_file,
                env.token,
                &file.token_file,
            )?,
            tls_ca: or(&flags.tls_ca, &file.tls_ca),
            tls_cert: or(&flags.tls_cert, &file.tls_cert),
            tls_key: or(&flags.tls_key, &file.tls_key),
            inbox_prefix: flags
                .inbox_prefix
                .clone()
                .or_else(|| file.inbox_prefix.clone()),
        };
        auth.check()?;
        Ok(auth)
    }

    /// A user of secure mode ([`super::secure`]), as any other login.
    pub fn from_login(login: &Login) -> NatsAuth {
        NatsAuth {
            user: Some(login.user.clone()),
            password: Some(login.password().to_string()),
            inbox_prefix: Some(login.inbox_prefix.clone()),
            ..NatsAuth::default()
        }
    }

    /// Nothing given: connect as anonymous, in plain text unless the URL says `tls://`.
    pub fn is_empty(&self) -> bool {
        *self == NatsAuth::default()
    }

    /// Combinations that cannot work and files that cannot be read, each naming its
    /// option.
    pub fn check(&self) -> Result<(), Error> {
        let ways: Vec<&str> = [
            self.creds.as_ref().map(|_| "--nats-creds (NATS_CREDS)"),
            self.user.as_ref().map(|_| "--nats-user (NATS_USER)"),
            self.token.as_ref().map(|_| "a token (NATS_TOKEN)"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if ways.len() > 1 {
            return Err(invalid(format!(
                "give one way to log in to NATS, not {}",
                ways.join(" and ")
            )));
        }
        match (&self.user, &self.password) {
            (Some(user), None) => {
                return Err(invalid(format!(
                    "NATS user {user:?} (--nats-user, NATS_USER) needs a password: \
                     NATS_PASSWORD or --nats-password-file"
                )));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "a NATS password (NATS_PASSWORD, --nats-password-file) needs a user: \
                     --nats-user or NATS_USER",
                ));
            }
            _ => {}
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "--nats-tls-cert (NATS_CERT) and --nats-tls-key (NATS_KEY) go together: \
                 give both or neither",
            ));
        }
        if let Some(path) = &self.creds {
            let text = read_file("--nats-creds (NATS_CREDS)", path)?;
            // Parsed now so that a damaged file fails at start, not at connect time.
            ConnectOptions::new().credentials(&text).map_err(|e| {
                invalid(format!(
                    "--nats-creds (NATS_CREDS) {}: not a NATS credentials file: {e}",
                    path.display()
                ))
            })?;
        }
        for (option, path) in [
            ("--nats-tls-ca (NATS_CA)", &self.tls_ca),
            ("--nats-tls-cert (NATS_CERT)", &self.tls_cert),
            ("--nats-tls-key (NATS_KEY)", &self.tls_key),
        ] {
            if let Some(path) = path {
                let text = read_file(option, path)?;
                if !text.contains("-----BEGIN ") {
                    return Err(invalid(format!(
                        "{option} {}: not a PEM file",
                        path.display()
                    )));
                }
            }
        }
        if let Some(prefix) = &self.inbox_prefix
            && (prefix.is_empty() || prefix.contains(['*', '>', ' ']) || prefix.ends_with('.'))
        {
            return Err(invalid(format!(
                "--nats-inbox-prefix {prefix:?} must be a subject without wildcards"
            )));
        }
        Ok(())
    }

    /// Adds the login and TLS to connection options.
    pub fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, Error> {
        if let Some(path) = &self.creds {
            let text = read_file("--nats-creds (NATS_CREDS)", path)?;
            options = options
                .credentials(&text)
                .map_err(|e| invalid(format!("--nats-creds {}: {e}", path.display())))?;
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        // Certificates given mean TLS is expected: never fall back to plain text.
        if self.tls_ca.is_some() || self.tls_cert.is_some() {
            options = options.require_tls(true);
        }
        if let Some(prefix) = self.effective_inbox_prefix() {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }

    /// The explicit prefix, else the own prefix of a user of `nats/auth.conf` (so the
    /// files `up --secure` writes keep working: `services` replies on
    /// `_INBOX_services`), else none (`_INBOX`).
    fn effective_inbox_prefix(&self) -> Option<String> {
        if let Some(prefix) = &self.inbox_prefix {
            return Some(prefix.clone());
        }
        let user = self.user.as_deref()?;
        let components: Vec<&'static str> =
            crate::app::catalog().iter().map(|c| c.name()).collect();
        let prefix = secure::inbox_prefix(user);
        (secure::users(&components).contains(&user) && prefix != "_INBOX").then_some(prefix)
    }

    /// What was presented, for error messages (never a secret).
    pub fn presented(&self) -> String {
        match (&self.creds, &self.user, &self.token) {
            (Some(creds), _, _) => format!("the credentials file {}", creds.display()),
            (None, Some(user), _) => format!("user {user:?} and its password"),
            (None, None, Some(_)) => "the token".to_string(),
            (None, None, None) => "no credentials".to_string(),
        }
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

fn read_file(option: &str, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read {option} {}: {e}", path.display())))
}

/// A secret file's content without its final line break; empty is refused.
fn read_secret(option: &str, path: &Path) -> Result<String, Error> {
    let text = read_file(option, path)?;
    let secret = text.trim_end_matches(['\n', '\r']);
    match secret.is_empty() {
        true => Err(invalid(format!("{option} {} is empty", path.display()))),
        false => Ok(secret.to_string()),
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
