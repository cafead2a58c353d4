//! Switchyard: the integration layer agentic workflows run on, built on NATS. Every
//! component is a NATS subscriber on subjects documented in `subjects.md`.
//!
//! How the crate is laid out:
//!
//! - [`subjects`] names every subject, stream, bucket and header (the contract), and
//!   [`envelope`] is the message format (CloudEvents headers, MessagePack or JSON).
//! - [`error`] is the one error taxonomy; every failure is an [`error::Error`] whose
//!   kind decides its reply code and whether it is retried.
//! - [`component`] is the one component model (subjects, start, readiness, graceful
//!   stop) with the shared request-reply [`component::responder`]; [`app`] wires the
//!   components for `up` and `run`.
//! - [`nats`] is the infrastructure underneath: the embedded nats-server, connecting,
//!   provisioning streams and buckets.
//! - Components, grouped as the seed groups them: [`integration`] (gateway, bus,
//!   registry), [`data`] (flow, sync, cache), [`system`] integration (instance,
//!   coordinator, health checks, monitor), [`resilience`] (retries, breakers,
//!   fallbacks, durable tasks, dead letters, the error logger; the taxonomy is
//!   [`error`]) and [`observability`] (metrics, logs on NATS, alerts).
//! - [`admin`] serves `/healthz`, `/readyz` and `/metrics`; [`bench`] measures the
//!   raw-NATS baselines; [`cli`] and [`config`] read flags, env and the TOML file.
//! - [`sdk`] is how users write services (operations with typed handlers, NATS micro,
//!   registry heartbeats); [`demo`] runs the SDK examples of `examples/` for
//!   `switchyard up --demo`.

// Lets `switchyard::…` paths resolve inside the crate too: the files in `examples/`
// are compiled into the library by [`demo`] and written as user code.
extern crate self as switchyard;

pub mod admin;
pub mod app;
pub mod bench;
pub mod cli;
pub mod component;
pub mod config;
pub mod data;
pub mod demo;
pub mod envelope;
pub mod error;
pub mod integration;
pub mod nats;
pub mod observability;
pub mod resilience;
pub mod sdk;
pub mod shutdown;
pub mod subjects;
pub mod system;

pub use error::{Error, ErrorKind};
