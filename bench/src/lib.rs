//! Benchmark data generators for mxkeys.
//!
//! Not shipped: this crate only produces realistic input files (see
//! [`acme`]) for the scripts under `bench/`.

pub mod acme;
pub mod der;
