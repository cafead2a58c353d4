//! Component integration: the event bus, the service registry and the API gateway. The
//! service SDK that agent services are written with is [`crate::sdk`].

pub mod bus;
pub mod gateway;
pub mod registry;
