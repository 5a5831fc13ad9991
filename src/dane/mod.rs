//! DANE (issue 14): TLSA records for a target's certificates and the gate
//! that holds a certificate change until senders can know its key.
//!
//! Pure cores, no DNS and no files: [`tlsa`] builds, parses, renders
//! and matches the records; [`gate`] decides, from what has been seen in
//! DNS and since when, whether a DANE target may install a new certificate;
//! [`ledger`] is what the DNS side recorded (`state_dir/dane.json`).
//! Effects: [`check`] looks at the served endpoints as a DANE sender would.

pub mod check;
pub mod gate;
pub mod ledger;
pub mod tlsa;
