//! MTA-STS (RFC 8461, issue 15): the policy senders fetch from
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, its id in the
//! `_mta-sts.DOMAIN` TXT record, and the order in which policy, id,
//! certificate and MX changes are made so a sender never sees an id whose
//! body is not served, nor an MX host the policy does not list.
//!
//! Pure cores (the policy and its id, the planner of changes) apart from
//! the effects (the HTTPS responder, the webroot writer).

pub mod ledger;
pub mod order;
pub mod pass;
pub mod policy;
pub mod probe;
pub mod records;
pub mod responder;
pub mod webroot;
