//! NATS infrastructure every component stands on: the embedded server, connecting, and
//! provisioning the streams and buckets named in [`crate::subjects`].

pub mod auth;
pub mod batch;
pub mod connect;
pub mod embedded;
pub mod provision;
pub mod secure;
pub mod watch;

pub use auth::NatsAuth;
pub use connect::{connect, connect_as, connect_with};
pub use embedded::{EmbeddedServer, ServerOptions};
pub use provision::{Provisioned, missing, provision};
