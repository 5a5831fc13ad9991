//! DNS record providers for mxkeys.
//!
//! This crate will hold the record-set abstraction that ACME DNS-01 challenges
//! and DKIM publishing write through, with its Cloudflare, RFC 2136, exec and
//! manual implementations. It is an empty skeleton until the DNS issue lands.
