//! The data flow (being built).
