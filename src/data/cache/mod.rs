//! The data cache (being built).
