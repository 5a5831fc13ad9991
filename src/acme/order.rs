//! One ACME order: identifiers, challenges published and solved together,
//! a CSR for a fresh (or kept) key, the issued chain checked like any
//! candidate (key match, chain, names, dates).
//!
//! Challenge responses are always cleaned up, also when the order fails.
//! Errors name the identifier, the challenge, and the CA's problem document
//! (its type and detail).
//!
//! Rules for real CAs (Boulder):
//! - `replaces` is sent only when the caller says the certificate held may
//!   be replaced; a new-order error while it was set is retried once
//!   without it.
//! - An order given up before finalizing has its authorizations
//!   deactivated, so it does not stay a pending replacement for days.
//! - The order's URL and key are handed to a checkpoint before finalizing;
//!   [`resume`] takes the certificate of such an order on the next pass
//!   instead of ordering anew.
//! - A key is kept (`reuse_key`) only when it is of the configured type;
//!   the caller may also hand it the DANE standby key to certify.
//! - An issued certificate whose notBefore is at most [`MAX_CLOCK_SKEW`]
//!   ahead of the local clock is kept, not thrown away (see there).

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewOrder,
    Order, OrderStatus, Problem, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, RsaKeySize};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::dns01;
use super::http01::{self, Tokens};
use crate::cert::{self, Bundle, Leaf, PrivateKey, Timeliness};
use crate::config::{AcmeKeyType, AcmeSource, Challenge};
use crate::dns::Provider;
use crate::names;
use mxkeys_providers::propagation::Propagation;

/// How long the CA may take to validate, and to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(120);
const ISSUANCE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why an order (or a recorded order fetched again) gave no certificate:
/// the step, the identifier and challenge where there is one, and the
/// CA's problem document as text. Never carries the key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrderError {
    #[error("new order: {0}")]
    NewOrder(String),
    #[error("authorization: {0}")]
    Authorization(String),
    /// An authorization neither pending nor valid (its status, as the CA
    /// named it).
    #[error("{identifier}: the authorization is {status}")]
    AuthorizationStatus { identifier: String, status: String },
    #[error("{identifier}: the CA offers no {challenge} challenge")]
    NoChallenge {
        identifier: String,
        challenge: String,
    },
    #[error("http-01 responder unavailable")]
    ResponderUnavailable,
    #[error(transparent)]
    Http01(#[from] super::http01::Http01Error),
    #[error(transparent)]
    Dns01(#[from] dns01::Dns01Error),
    /// The CA refused to hear that a challenge is ready.
    #[error("{identifier}: {challenge}: {problem}")]
    ChallengeReady {
        identifier: String,
        challenge: String,
        problem: String,
    },
    /// Validation failed: each failed challenge's identifier, type and
    /// problem, or the order's own problem.
    #[error("{}", .0.join("; "))]
    Validation(Vec<String>),
    #[error("the kept or standby key cannot be used: {0}")]
    KeptKey(#[source] rcgen::Error),
    #[error("generating a {key_type:?} key: {source}")]
    GenerateKey {
        key_type: AcmeKeyType,
        #[source]
        source: rcgen::Error,
    },
    #[error("CSR: {0}")]
    Csr(#[source] rcgen::Error),
    #[error("finalize: {0}")]
    Finalize(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("fetching the order {url}: {problem}")]
    FetchOrder { url: String, problem: String },
    #[error("the recorded order key cannot be used: {0}")]
    RecordedKey(#[source] rcgen::Error),
    #[error("the issued chain: {0}")]
    IssuedChain(#[source] cert::CertError),
    #[error("the new key: {0}")]
    NewKey(#[source] cert::CertError),
    #[error("the issued certificate: {0}")]
    IssuedCertificate(#[source] cert::CertError),
    #[error("the issued certificate does not cover {}", .0.join(", "))]
    NotCovering(Vec<String>),
    #[error("the issued certificate is not valid now (valid from {} to {}; is the clock right?)", crate::rfc3339(*.not_before), crate::rfc3339(*.not_after))]
    NotValidNow { not_before: i64, not_after: i64 },
    /// The order could not be recorded before finalizing (it is
    /// abandoned).
    #[error(transparent)]
    Checkpoint(Box<super::AcmeError>),
}

/// What an order needs besides its source.
pub struct Context<'a> {
    pub account: &'a Account,
    /// A profile the CA offers (checked by the caller).
    pub profile: Option<&'a str>,
    /// The shared map of the built-in HTTP-01 responders.
    pub tokens: &'a Tokens,
    /// The provider and propagation check of a dns-01 source.
    pub dns: Option<(&'a Provider, &'a Propagation)>,
    /// A shared source's order (issue 18): HTTP-01 key authorizations are
    /// also stored at `http01/TOKEN` on this host's lease, so any host's
    /// responder can answer, and the CA is asked to validate once every
    /// host that answers for the source said it does
    /// ([`crate::cluster::acme::wait_for_answers`]).
    pub cluster: Option<&'a crate::cluster::acme::Ctx>,
}

/// The certificate an `acme` source holds before this order.
#[derive(Clone)]
pub struct Previous {
    pub leaf: CertificateDer<'static>,
    /// Its key, kept when `reuse_key` asks.
    pub key_pem: Zeroizing<String>,
}

/// An issued, checked certificate.
pub struct Issued {
    /// Private key, leaf, intermediates: what `bundle.pem` holds.
    pub bundle_pem: Zeroizing<String>,
    pub sha256: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// A challenge to answer.
struct Pending {
    /// As the CA shows it (`*.example.com` for a wildcard).
    identifier: String,
    token: String,
    key_authorization: String,
    dns_value: String,
}

/// How an order relates to the certificate held.
pub struct Renewal<'a> {
    /// The certificate held, when there is one.
    pub previous: Option<&'a Previous>,
    /// Name it in `replaces` (the caller checked it was issued to this
    /// account by this directory, for overlapping names).
    pub replaces: bool,
    /// The key to certify (PEM): the held key kept, or the DANE standby
    /// key; `None` for a new one.
    pub key: Option<&'a Zeroizing<String>>,
}

/// Called with the order's URL and its key just before finalizing, so an
/// order finalized but not stored can be fetched again; an error abandons
/// the order.
pub type Checkpoint<'a> = dyn FnMut(&str, &Zeroizing<String>) -> Result<(), super::AcmeError> + 'a;

/// Places an order for `source` and returns the checked certificate.
pub async fn order(
    source: &AcmeSource,
    ctx: &Context<'_>,
    renewal: &Renewal<'_>,
    checkpoint: &mut Checkpoint<'_>,
) -> Result<Issued, OrderError> {
    let identifiers: Vec<Identifier> = source
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.as_str().to_owned()))
        .collect();
    // A delegation CNAME missing or wrong is an error before the CA hears
    // of the order.
    if let Challenge::Dns01 { provider } = &source.challenge {
        let names: Vec<&str> = source.domains.iter().map(|d| d.as_str()).collect();
        dns01::preflight(provider, ctx.dns, &names).await?;
    }
    let replaced = renewal
        .previous
        .filter(|_| renewal.replaces)
        .and_then(|p| CertificateIdentifier::try_from(&p.leaf).ok());
    let build = |replaces: bool| {
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(profile) = ctx.profile {
            new_order = new_order.profile(profile);
        }
        // `replaces` (RFC 9773) ties a renewal to the certificate it
        // replaces, which exempts it from rate limits at CAs with ARI.
        if replaces && let Some(id) = &replaced {
            new_order = new_order.replaces(id.clone());
        }
        new_order
    };
    let mut order = match ctx.account.new_order(&build(replaced.is_some())).await {
        // A CA without ARI takes no `replaces`: order without it.
        Err(instant_acme::Error::Unsupported(_)) if replaced.is_some() => {
            ctx.account.new_order(&build(false)).await
        }
        // A rate limit applies with or without `replaces`.
        Err(e) if is_rate_limited(&e) => Err(e),
        // The CA refused `replaces` (`alreadyReplaced` after an order left
        // pending, a certificate it does not know or gave another
        // account): once without it.
        Err(e) if replaced.is_some() => {
            tracing::warn!(
                "acme source {}: the order naming the certificate it replaces was refused ({}); ordering without `replaces`",
                source.name,
                acme_error(&e)
            );
            ctx.account.new_order(&build(false)).await
        }
        other => other,
    }
    .map_err(|e| OrderError::NewOrder(acme_error(&e)))?;

    let key = match until_finalize(source, ctx, &mut order, renewal).await {
        Ok(key) => key,
        Err(e) => {
            abandon(source, &mut order).await;
            return Err(e);
        }
    };
    let key_pem = Zeroizing::new(key.serialize_pem());
    if let Err(e) = checkpoint(order.url(), &key_pem) {
        abandon(source, &mut order).await;
        return Err(OrderError::Checkpoint(Box::new(e)));
    }
    finish(source, &mut order, &key, &key_pem).await
}

/// The challenges answered and the key to certify, or why not.
async fn until_finalize(
    source: &AcmeSource,
    ctx: &Context<'_>,
    order: &mut Order,
    renewal: &Renewal<'_>,
) -> Result<KeyPair, OrderError> {
    let challenge_type = match source.challenge {
        Challenge::Dns01 { .. } => ChallengeType::Dns01,
        _ => ChallengeType::Http01,
    };
    let pending = collect_challenges(order, &challenge_type).await?;
    let published = publish(source, ctx, &pending).await;
    let validated = match published {
        Ok(()) => validate(order, &challenge_type, &pending).await,
        Err(e) => Err(e),
    };
    unpublish(source, ctx, &pending).await;
    validated?;

    match renewal.key {
        Some(pem) => KeyPair::from_pem(pem).map_err(OrderError::KeptKey),
        None => new_key(source.key_type),
    }
}

/// Finalizes with a CSR for `key` and downloads the checked certificate.
async fn finish(
    source: &AcmeSource,
    order: &mut Order,
    key: &KeyPair,
    key_pem: &Zeroizing<String>,
) -> Result<Issued, OrderError> {
    let mut params = CertificateParams::new(
        source
            .domains
            .iter()
            .map(|d| d.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .map_err(OrderError::Csr)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(key).map_err(OrderError::Csr)?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| OrderError::Finalize(acme_error(&e)))?;
    download(source, order, key_pem).await
}

async fn download(
    source: &AcmeSource,
    order: &mut Order,
    key_pem: &Zeroizing<String>,
) -> Result<Issued, OrderError> {
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(ISSUANCE_TIMEOUT))
        .await
        .map_err(|e| OrderError::Certificate(acme_error(&e)))?;
    check(source, &chain, key_pem, crate::now())
}

/// An order given up before finalizing: its authorizations are
/// deactivated, so the CA no longer counts it as a pending replacement
/// (Boulder's `alreadyReplaced`) nor reuses them.
async fn abandon(source: &AcmeSource, order: &mut Order) {
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let Ok(mut authz) = next else { break };
        if !matches!(
            authz.status,
            AuthorizationStatus::Pending | AuthorizationStatus::Valid
        ) {
            continue;
        }
        let identifier = authz.identifier().to_string();
        if let Err(e) = authz.deactivate().await {
            tracing::warn!(
                "acme source {}: {identifier}: cannot deactivate the abandoned authorization: {}",
                source.name,
                acme_error(&e)
            );
        }
    }
}

/// What fetching a recorded order again gave.
pub enum Resumed {
    /// Its certificate, checked.
    Issued(Issued),
    /// Nothing to take (pending, invalid, unknown to the CA): order anew.
    Gone(String),
}

/// Fetches an order finalized before (or about to be) from its URL and
/// takes its certificate: finalized with the recorded key if still ready,
/// downloaded when valid. A network failure is an error (the order stays
/// recorded); a CA's refusal or an order that never got that far is
/// [`Resumed::Gone`].
pub async fn resume(
    source: &AcmeSource,
    account: &Account,
    url: &str,
    key_pem: &Zeroizing<String>,
) -> Result<Resumed, OrderError> {
    let mut order = match account.order(url.to_owned()).await {
        Ok(order) => order,
        Err(e @ instant_acme::Error::Api(_)) => return Ok(Resumed::Gone(acme_error(&e))),
        Err(e) => {
            return Err(OrderError::FetchOrder {
                url: url.to_owned(),
                problem: acme_error(&e),
            });
        }
    };
    match order.state().status {
        OrderStatus::Valid | OrderStatus::Processing => download(source, &mut order, key_pem)
            .await
            .map(Resumed::Issued),
        OrderStatus::Ready => {
            let key = KeyPair::from_pem(key_pem).map_err(OrderError::RecordedKey)?;
            finish(source, &mut order, &key, key_pem)
                .await
                .map(Resumed::Issued)
        }
        OrderStatus::Pending => {
            abandon(source, &mut order).await;
            Ok(Resumed::Gone("it was never validated".to_owned()))
        }
        OrderStatus::Invalid => Ok(Resumed::Gone("it is invalid".to_owned())),
    }
}

/// Every pending authorization's challenge of the wanted type.
async fn collect_challenges(
    order: &mut Order,
    challenge_type: &ChallengeType,
) -> Result<Vec<Pending>, OrderError> {
    let mut pending = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| OrderError::Authorization(acme_error(&e)))?;
        let identifier = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(OrderError::AuthorizationStatus {
                    identifier,
                    status: format!("{other:?}"),
                });
            }
        }
        let challenge =
            authz
                .challenge(challenge_type.clone())
                .ok_or_else(|| OrderError::NoChallenge {
                    identifier: identifier.clone(),
                    challenge: format!("{challenge_type:?}"),
                })?;
        let key_authorization = challenge.key_authorization();
        pending.push(Pending {
            identifier,
            token: challenge.token.clone(),
            key_authorization: key_authorization.as_str().to_owned(),
            dns_value: key_authorization.dns_value(),
        });
    }
    Ok(pending)
}

/// The DNS-01 view of the pending challenges.
fn dns_challenges(pending: &[Pending]) -> Vec<dns01::Challenge<'_>> {
    pending
        .iter()
        .map(|p| dns01::Challenge {
            identifier: &p.identifier,
            value: &p.dns_value,
        })
        .collect()
}

/// Puts every challenge response in place; for DNS-01, waits until every
/// authoritative server answers them.
async fn publish(
    source: &AcmeSource,
    ctx: &Context<'_>,
    pending: &[Pending],
) -> Result<(), OrderError> {
    if let (Some(shared), Challenge::Http01Listen(_) | Challenge::Http01Webroot(_)) =
        (ctx.cluster, &source.challenge)
    {
        use crate::cluster::SharedStore as _;
        let mut stored = Vec::new();
        for p in pending {
            let key = crate::cluster::acme::token_key(&p.token);
            // This host answers itself too: a failure here is logged.
            match shared
                .store
                .put_leased(&key, p.key_authorization.as_bytes())
                .await
            {
                Ok(()) => stored.push(p.token.as_str()),
                Err(e) => tracing::warn!("http-01: {key}: not shared through the cluster: {e}"),
            }
        }
        // The CA may ask any host that answers for the source: each must
        // have the tokens before it is asked.
        crate::cluster::acme::wait_for_answers(
            &shared.store,
            &source.name,
            &stored,
            shared.host.as_str(),
            crate::cluster::acme::ANSWER_WAIT,
        )
        .await;
    }
    match &source.challenge {
        Challenge::Http01Listen(_) => {
            let mut tokens = ctx
                .tokens
                .lock()
                .map_err(|_| OrderError::ResponderUnavailable)?;
            for p in pending {
                tokens.insert(p.token.clone(), p.key_authorization.clone());
            }
            Ok(())
        }
        Challenge::Http01Webroot(root) => {
            let files: Vec<(String, String)> = pending
                .iter()
                .map(|p| (p.token.clone(), p.key_authorization.clone()))
                .collect();
            Ok(http01::write_webroot_tokens(root, &files)?)
        }
        Challenge::Dns01 { provider: name } => {
            Ok(dns01::publish(name, ctx.dns, &dns_challenges(pending)).await?)
        }
    }
}

/// Removes every challenge response (errors are logged: the order's
/// outcome matters more).
async fn unpublish(source: &AcmeSource, ctx: &Context<'_>, pending: &[Pending]) {
    if let (Some(shared), Challenge::Http01Listen(_) | Challenge::Http01Webroot(_)) =
        (ctx.cluster, &source.challenge)
    {
        use crate::cluster::SharedStore as _;
        let store = &shared.store;
        for p in pending {
            let key = crate::cluster::acme::token_key(&p.token);
            if let Err(e) = store.delete(&key).await {
                tracing::warn!("http-01: {key}: {e}");
            }
        }
    }
    match &source.challenge {
        Challenge::Http01Listen(_) => {
            if let Ok(mut tokens) = ctx.tokens.lock() {
                for p in pending {
                    tokens.remove(&p.token);
                }
            }
        }
        Challenge::Http01Webroot(root) => {
            http01::remove_webroot_tokens(root, pending.iter().map(|p| p.token.as_str()))
        }
        Challenge::Dns01 { provider: name } => {
            dns01::unpublish(name, ctx.dns, &dns_challenges(pending)).await
        }
    }
}

/// Tells the CA the challenges are ready and waits for its verdict.
async fn validate(
    order: &mut Order,
    challenge_type: &ChallengeType,
    pending: &[Pending],
) -> Result<(), OrderError> {
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| OrderError::Authorization(acme_error(&e)))?;
        if authz.status != AuthorizationStatus::Pending {
            continue;
        }
        let identifier = authz.identifier().to_string();
        if let Some(mut challenge) = authz.challenge(challenge_type.clone()) {
            challenge
                .set_ready()
                .await
                .map_err(|e| OrderError::ChallengeReady {
                    identifier: identifier.clone(),
                    challenge: format!("{challenge_type:?}"),
                    problem: acme_error(&e),
                })?;
        }
    }
    let status = order
        .poll_ready(&RetryPolicy::new().timeout(VALIDATION_TIMEOUT))
        .await;
    match status {
        Ok(OrderStatus::Ready) => Ok(()),
        Ok(other) => Err(failed_challenges(
            order,
            challenge_type,
            pending,
            &format!("the order is {other:?}"),
        )
        .await),
        Err(e) => Err(failed_challenges(order, challenge_type, pending, &acme_error(&e)).await),
    }
}

/// Why validation failed: each failed challenge's identifier, type and
/// problem, or the order's own problem.
async fn failed_challenges(
    order: &mut Order,
    challenge_type: &ChallengeType,
    pending: &[Pending],
    fallback: &str,
) -> OrderError {
    let mut reasons = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(Ok(authz)) = authorizations.next().await {
            let identifier = authz.identifier().to_string();
            for challenge in authz
                .challenges
                .iter()
                .filter(|c| &c.r#type == challenge_type)
            {
                if let Some(problem) = &challenge.error {
                    reasons.push(format!(
                        "{identifier}: {challenge_type:?}: {}",
                        problem_text(problem)
                    ));
                }
            }
        }
    }
    if reasons.is_empty()
        && let Some(problem) = &order.state().error
    {
        reasons.push(problem_text(problem));
    }
    if reasons.is_empty() {
        let names: Vec<&str> = pending.iter().map(|p| p.identifier.as_str()).collect();
        reasons.push(format!("{}: {fallback}", names.join(", ")));
    }
    OrderError::Validation(reasons)
}

fn problem_text(p: &Problem) -> String {
    let mut text = format!(
        "{}: {}",
        p.r#type.as_deref().unwrap_or("problem"),
        p.detail.as_deref().unwrap_or("(no detail)")
    );
    for sub in &p.subproblems {
        let detail = sub.detail.as_deref().unwrap_or("");
        text.push_str(&format!(
            " [{}: {detail}]",
            sub.r#type.as_deref().unwrap_or("")
        ));
    }
    text
}

fn is_rate_limited(e: &instant_acme::Error) -> bool {
    matches!(e, instant_acme::Error::Api(p)
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited"))
}

/// An instant-acme error, with the CA's problem document when there is one.
pub fn acme_error(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(problem) => problem_text(problem),
        other => other.to_string(),
    }
}

pub fn new_key(key_type: AcmeKeyType) -> Result<KeyPair, OrderError> {
    let key = match key_type {
        AcmeKeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        AcmeKeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        AcmeKeyType::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
        }
        AcmeKeyType::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
        }
        AcmeKeyType::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
        }
    };
    key.map_err(|source| OrderError::GenerateKey { key_type, source })
}

/// How far in the future an issued certificate's notBefore may be (the
/// CA's clock a little ahead of ours) and still be kept: it is stored, and
/// the pipeline installs it once it is valid by the local clock (the
/// daemon wakes at its notBefore); the certificate held stays installed
/// until then. Further ahead, the local clock is wrong: an error.
pub const MAX_CLOCK_SKEW: i64 = 300;

/// Checks the issued chain like any candidate: key match, chain
/// signatures, every name covered, valid now (or within
/// [`MAX_CLOCK_SKEW`] of its start).
fn check(
    source: &AcmeSource,
    chain_pem: &str,
    key_pem: &str,
    now: i64,
) -> Result<Issued, OrderError> {
    let certs = cert::parse_pem_certs(chain_pem.as_bytes()).map_err(OrderError::IssuedChain)?;
    let key = PrivateKey::from_pem(key_pem.as_bytes()).map_err(OrderError::NewKey)?;
    let bundle = Bundle { certs, key };
    bundle.verify().map_err(OrderError::IssuedCertificate)?;
    let leaf = Leaf::parse(bundle.leaf_der()).map_err(OrderError::IssuedCertificate)?;
    if let Err(missing) = names::cover_all(&leaf.names, &source.domains) {
        return Err(OrderError::NotCovering(
            missing.iter().map(|n| n.as_str().to_owned()).collect(),
        ));
    }
    let usable = leaf.validity.at(now) == Timeliness::Valid
        || (leaf.validity.at(now + MAX_CLOCK_SKEW) == Timeliness::Valid
            && leaf.validity.not_before > now);
    if !usable {
        return Err(OrderError::NotValidNow {
            not_before: leaf.validity.not_before,
            not_after: leaf.validity.not_after,
        });
    }
    Ok(Issued {
        sha256: cert::fingerprint(bundle.leaf_der()),
        not_before: leaf.validity.not_before,
        not_after: leaf.validity.not_after,
        bundle_pem: bundle.combined_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_like_the_ca_wrote_them() {
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:connection","detail":"127.0.0.1: Connection refused","status":400}"#,
        )
        .unwrap();
        assert_eq!(
            problem_text(&p),
            "urn:ietf:params:acme:error:connection: 127.0.0.1: Connection refused"
        );
    }
}
