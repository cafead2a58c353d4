//! The connections components run on: one shared connection, or (secure mode, `up
//! --secure`) one per component, each logged in as the component's own NATS user so the
//! server enforces what it may publish and subscribe (`nats/auth.conf`).

use std::collections::HashMap;

use async_nats::Client;

use crate::error::Error;
use crate::nats::connect_as;
use crate::nats::secure::{PROCESS_USER, PROVISIONER_USER, Secrets};

pub struct Connections {
    /// The process's connection: the error logger, the log publisher, the NATS gauges,
    /// and every component without a connection of its own.
    pub process: Client,
    /// Checks that the streams and buckets exist and re-creates them; `None` means the
    /// process's connection.
    pub provisioner: Option<Client>,
    /// A component's own connection, by component name.
    pub components: HashMap<&'static str, Client>,
}

impl Connections {
    /// Everything on one connection.
    pub fn shared(client: Client) -> Connections {
        Connections {
            process: client,
            provisioner: None,
            components: HashMap::new(),
        }
    }

    /// Secure mode: the process as user `switchyard`, provisioning as `provisioner`,
    /// and each of `components` as the user of its name. Connections are named
    /// `switchyard-<user>` (the process's: `switchyard`), so the server's connection
    /// list shows who is who.
    pub async fn secure(
        url: &str,
        secrets: &Secrets,
        components: &[&'static str],
    ) -> Result<Connections, Error> {
        let as_user = |user: &'static str| async move {
            let name = match user {
                PROCESS_USER => PROCESS_USER.to_string(),
                _ => format!("switchyard-{user}"),
            };
            connect_as(url, &name, Some(secrets.login(user)?)).await
        };
        let process = as_user(PROCESS_USER).await?;
        let provisioner = Some(as_user(PROVISIONER_USER).await?);
        let mut own = HashMap::new();
        for &component in components {
            own.insert(component, as_user(component).await?);
        }
        Ok(Connections {
            process,
            provisioner,
            components: own,
        })
    }
}
