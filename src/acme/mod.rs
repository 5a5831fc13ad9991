//! Ordering certificates from an ACME CA (RFC 8555) for `type = "acme"`
//! sources, with instant-acme.

pub mod schedule;
