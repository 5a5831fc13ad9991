//! The integration tests of `mxkeys-providers`, in one test binary: the
//! Cloudflare provider against a local stand-in of its API, the RFC 2136
//! provider and the propagation check against a real BIND 9 on loopback,
//! the DNSSEC observation against BIND signing a zone and Unbound
//! validating it (in a network namespace of each test's own).
//! The harness (BIND, the stand-in, the port pool) is the
//! `mxkeys-testsupport` crate, which does not depend on this crate.

mod bind_client;
mod cloudflare;
mod observe;
mod propagation;
mod rfc2136;
