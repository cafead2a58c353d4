//! System integration: what Switchyard knows about its own processes. The coordinator,
//! the system monitor and health checks join `instance` here.

pub mod instance;
