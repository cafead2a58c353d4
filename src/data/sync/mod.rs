//! Data sync (being built).
