//! Secure mode (`switchyard up --secure`): the embedded nats-server runs with
//! `nats/auth.conf`, which gives every component, the SDK services, the clients and the
//! operator their own NATS user with least-privilege permissions (subjects.md, "Users and
//! permissions").
//!
//! Passwords are never stored in the repository nor in a configuration file: they are
//! drawn fresh at every start, handed to nats-server through its environment (the
//! configuration says `password: $SWITCHYARD_NATS_PASS_<USER>`, which nats-server
//! resolves from its environment), and given to the clients in files readable by the
//! owner only. Nothing here logs a password, and [`Login`]'s `Debug` hides it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;

use crate::error::Error;

/// The permissions, compiled in so that they always match what this binary does.
pub const AUTH_CONF: &str = include_str!("../../nats/auth.conf");

/// The process-wide connection: the error logger (`errors.<component>`), the log
/// publisher (`logs.<level>.<component>`) and readiness checks.
pub const PROCESS_USER: &str = "switchyard";
/// Creates and updates exactly Switchyard's streams and buckets.
pub const PROVISIONER_USER: &str = "provisioner";
/// Services built with the SDK (the demo services of `up --demo`).
pub const SERVICES_USER: &str = "services";
/// Applications: call services and tasks, publish records, read events.
pub const CLIENT_USER: &str = "client";
/// People and tools: the `switchyard` commands, the `nats` CLI's stream and KV views.
pub const OPERATOR_USER: &str = "operator";

/// Users that are not a component, in the order `auth.conf` lists them.
pub const OTHER_USERS: [&str; 5] = [
    PROCESS_USER,
    PROVISIONER_USER,
    SERVICES_USER,
    CLIENT_USER,
    OPERATOR_USER,
];

/// Subdirectory of the data directory holding the generated server configuration and
/// the client files (mode 0700; files 0600).
pub const SECURE_DIR: &str = "secure";

/// Every user: one per component of `components`, then [`OTHER_USERS`].
pub fn users(components: &[&'static str]) -> Vec<&'static str> {
    components.iter().copied().chain(OTHER_USERS).collect()
}

/// The environment variable nats-server reads `user`'s password from.
pub fn password_var(user: &str) -> String {
    format!("SWITCHYARD_NATS_PASS_{}", user.to_ascii_uppercase())
}

/// Where `user`'s replies arrive. Switchyard's own users each get their own prefix so
/// that no user can read another's replies; clients and operators keep the standard
/// `_INBOX` so that the `nats` CLI works without extra flags.
pub fn inbox_prefix(user: &str) -> String {
    match user {
        CLIENT_USER | OPERATOR_USER => "_INBOX".to_string(),
        _ => format!("_INBOX_{user}"),
    }
}

/// One user's credentials.
#[derive(Clone)]
pub struct Login {
    pub user: String,
    password: String,
    pub inbox_prefix: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

impl Login {
    pub fn new(user: &str, password: String) -> Login {
        Login {
            user: user.to_string(),
            password,
            inbox_prefix: inbox_prefix(user),
        }
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Adds the credentials and the inbox prefix to connection options.
    pub fn apply(&self, options: ConnectOptions) -> ConnectOptions {
        options
            .user_and_password(self.user.clone(), self.password.clone())
            .custom_inbox_prefix(&self.inbox_prefix)
    }
}

/// Fresh passwords for every user, valid for one start of the server.
#[derive(Clone)]
pub struct Secrets {
    logins: BTreeMap<String, Login>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.logins.values()).finish()
    }
}

impl Secrets {
    /// A new random password (192 bits) for each of `users`.
    pub fn generate(users: &[&str]) -> Result<Secrets, Error> {
        let mut logins = BTreeMap::new();
        for user in users {
            logins.insert(user.to_string(), Login::new(user, random_password()?));
        }
        Ok(Secrets { logins })
    }

    pub fn login(&self, user: &str) -> Result<&Login, Error> {
        self.logins
            .get(user)
            .ok_or_else(|| Error::internal(format!("no NATS user {user:?} in secure mode")))
    }

    /// What nats-server needs in its environment to resolve the passwords.
    pub fn server_env(&self) -> Vec<(String, String)> {
        self.logins
            .values()
            .map(|login| (password_var(&login.user), login.password.clone()))
            .collect()
    }
}

/// 24 random bytes (the system's CSPRNG) as 48 hex digits behind a letter. nats-server parses an environment
/// value like a configuration value, so it must read as a plain string: a leading digit
/// could make it a number, quotes or spaces would change its meaning.
fn random_password() -> Result<String, Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no random numbers from the system: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("p{hex}"))
}

/// The server configuration of secure mode: `base` (nats/dev.conf or the operator's)
/// followed by the users and permissions. The result holds no secret, only references
/// to environment variables.
pub fn server_config(base: &str) -> String {
    format!(
        "{base}\n\n# ---- appended by `switchyard up --secure`: nats/auth.conf ----\n{AUTH_CONF}"
    )
}

/// Users whose credentials `up --secure` writes for programs outside the process.
pub const FILE_USERS: [&str; 3] = [CLIENT_USER, OPERATOR_USER, SERVICES_USER];

/// The files one user connects with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    pub user: &'static str,
    /// `nats --context <this>`: a `nats` CLI context (url, user, password, inbox).
    pub context: PathBuf,
    /// `. <this>`: exports `NATS_URL`, `NATS_USER`, `NATS_PASSWORD`, which the `nats`
    /// CLI, the `switchyard` tools and SDK service programs read.
    pub env: PathBuf,
}

/// Writes the credentials of [`FILE_USERS`] under `<data dir>/secure/`, readable by the
/// owner only, and returns their paths.
pub fn write_credential_files(
    data_dir: &Path,
    url: &str,
    secrets: &Secrets,
) -> Result<Vec<CredentialFiles>, Error> {
    let dir = secure_dir(data_dir)?;
    let mut files = Vec::new();
    for user in FILE_USERS {
        let login = secrets.login(user)?;
        let context = serde_json::json!({
            "description": format!("Switchyard secure mode, user {user}"),
            "url": url,
            "user": login.user,
            "password": login.password,
            "inbox_prefix": login.inbox_prefix,
        });
        let context_path = dir.join(format!("{user}.json"));
        write_private(&context_path, context.to_string().as_bytes())?;
        let env_path = dir.join(format!("{user}.env"));
        let env = format!(
            "export NATS_URL={url}\nexport NATS_USER={}\nexport NATS_PASSWORD={}\n",
            login.user, login.password
        );
        write_private(&env_path, env.as_bytes())?;
        files.push(CredentialFiles {
            user,
            context: context_path,
            env: env_path,
        });
    }
    Ok(files)
}

/// `<data dir>/secure`, created with mode 0700.
pub fn secure_dir(data_dir: &Path) -> Result<PathBuf, Error> {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir.join(SECURE_DIR);
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| Error::unavailable(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Writes `contents` to `path` with mode 0600 (also when the file already existed).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(contents)
        });
    written.map_err(|e| Error::unavailable(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_fresh_and_read_as_plain_strings() {
        let a = Secrets::generate(&["gateway", "client"]).unwrap();
        let b = Secrets::generate(&["gateway", "client"]).unwrap();
        let (pa, pb) = (
            a.login("gateway").unwrap().password(),
            b.login("gateway").unwrap().password(),
        );
        assert_ne!(pa, pb);
        assert_eq!(pa.len(), 49);
        assert!(pa.starts_with('p'));
        assert!(pa[1..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a.login("nobody").is_err());
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let secrets = Secrets::generate(&["gateway"]).unwrap();
        let password = secrets.login("gateway").unwrap().password().to_string();
        let shown = format!("{secrets:?} {:?}", secrets.login("gateway").unwrap());
        assert!(!shown.contains(&password), "{shown}");
        assert!(shown.contains("gateway"), "{shown}");
    }

    #[test]
    fn users_have_their_own_inboxes_and_variables() {
        assert_eq!(
            password_var("deadletter"),
            "SWITCHYARD_NATS_PASS_DEADLETTER"
        );
        assert_eq!(inbox_prefix("gateway"), "_INBOX_gateway");
        assert_eq!(inbox_prefix(CLIENT_USER), "_INBOX");
        let env = Secrets::generate(&["sync"]).unwrap().server_env();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].0, "SWITCHYARD_NATS_PASS_SYNC");
    }

    #[test]
    fn credential_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::generate(&FILE_USERS).unwrap();
        let files = write_credential_files(dir.path(), "nats://127.0.0.1:4222", &secrets).unwrap();
        assert_eq!(files.len(), FILE_USERS.len());
        for path in files.iter().flat_map(|f| [&f.context, &f.env]) {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        let mode = std::fs::metadata(dir.path().join(SECURE_DIR))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let client = &files[0];
        assert_eq!(client.user, CLIENT_USER);
        let context: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&client.context).unwrap()).unwrap();
        assert_eq!(context["user"], "client");
        let password = secrets.login(CLIENT_USER).unwrap().password();
        assert_eq!(context["password"], password);
        let env = std::fs::read_to_string(&client.env).unwrap();
        assert!(
            env.contains(&format!("export NATS_PASSWORD={password}\n")),
            "{env}"
        );
    }
}
