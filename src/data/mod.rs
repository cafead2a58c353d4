//! Data integration, as the seed orders it: Source → [`flow`] (route) → [`sync`]
//! (deliver with acks) → [`cache`] (statuses, shared data) → Target; the target's
//! answer updates the status through the cache and confirms to the source.
//!
//! - [`record`]: a record of stream `DATA` as flow and sync read it.
//! - [`flow`]: flow rules in KV `flows`, applied live and by the time each record was
//!   stored; unrouted and malformed records.
//! - [`sync`]: one durable consumer per target, delivery in order per key, statuses,
//!   confirmations, dead letters.
//! - [`cache`]: the moka layer over KV `cache`, namespaces, cross-instance
//!   invalidation, `cache.get|put|del.<namespace>.<key>`.

pub mod cache;
pub mod flow;
pub mod record;
pub mod sync;
