//! Verifying what a service serves: connect like a mail client (STARTTLS
//! for SMTP, IMAP and POP3, or TLS from the first byte), offer only the
//! signature schemes of one key type, and compare the leaf the server
//! presents with the one mxkeys installed.
//!
//! The certificate is not validated against a root store: the question is
//! "is this exactly the certificate we installed", not "is it trusted". The
//! handshake signature is still checked, so the server must hold the key.
//! [`served_chain`] gives the whole chain at one address, for `dane check`;
//! [`served_chain_with`] the same with a client configuration of the
//! caller's (MTA-STS validates the chain there).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::cert::KeyType;
use crate::config::{Verify, VerifyProtocol};

/// How long one connection attempt may take, each step.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts while a server is still reloading.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// A service that did not present the installed certificate by the
/// deadline: which endpoint, and the last thing that went wrong there.
#[derive(Debug, thiserror::Error)]
#[error("{protocol} {address}: {problem}")]
pub struct VerifyError {
    /// `smtp`, `imap`, `pop3` or `tls`.
    pub protocol: &'static str,
    /// The endpoint's configured address.
    pub address: String,
    /// The last attempt's problem.
    #[source]
    pub problem: Failure,
}

/// What one attempt to get the served leaf ran into.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A handshake completed, with another certificate (fingerprints).
    #[error("serves {served} instead of {expected}")]
    OtherLeaf { served: String, expected: String },
    #[error("cannot resolve: {0}")]
    Resolve(#[source] std::io::Error),
    #[error("no address")]
    NoAddress,
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// Setting the socket's timeouts failed.
    #[error("{0}")]
    Socket(#[source] std::io::Error),
    #[error("SNI {sni:?}: {source}")]
    Sni {
        sni: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS client could not be set up.
    #[error("{0}")]
    Tls(#[source] rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("the server presented no certificate")]
    NoCertificate,
    /// The plain-text greeting was not the protocol's (`IMAP`, `POP3`).
    #[error("unexpected {protocol} greeting {line:?}")]
    Greeting {
        protocol: &'static str,
        line: String,
    },
    /// The server refused to start TLS (`command` is `STARTTLS` or `STLS`).
    #[error("{command} refused: {line:?}")]
    StartTlsRefused { command: &'static str, line: String },
    #[error("SMTP server answered {line:?}, expected {expected}")]
    Smtp {
        line: String,
        expected: &'static str,
    },
    #[error("write: {0}")]
    Write(#[source] std::io::Error),
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("line too long")]
    LineTooLong,
}

/// Keeps asking `endpoint` (offering only `key_type`'s signature schemes)
/// until it serves `expected_leaf` or `timeout` passes. The error says what
/// was served instead, or why no handshake completed.
pub fn wait_for(
    endpoint: &Verify,
    sni: &str,
    key_type: KeyType,
    expected_leaf: &[u8],
    timeout: Duration,
) -> Result<(), VerifyError> {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = served_leaf(endpoint, sni, key_type).and_then(|leaf| {
            if leaf == expected_leaf {
                Ok(())
            } else {
                Err(Failure::OtherLeaf {
                    served: crate::cert::fingerprint(&leaf),
                    expected: crate::cert::fingerprint(expected_leaf),
                })
            }
        });
        match outcome {
            Ok(()) => return Ok(()),
            Err(problem) if Instant::now() + RETRY_PAUSE >= deadline => {
                return Err(VerifyError {
                    protocol: endpoint_name(endpoint),
                    address: endpoint.address.clone(),
                    problem,
                });
            }
            Err(_) => std::thread::sleep(RETRY_PAUSE),
        }
    }
}

fn endpoint_name(endpoint: &Verify) -> &'static str {
    match endpoint.protocol {
        VerifyProtocol::Smtp => "smtp",
        VerifyProtocol::Imap => "imap",
        VerifyProtocol::Pop3 => "pop3",
        VerifyProtocol::Tls => "tls",
    }
}

/// The leaf certificate (DER) `endpoint` presents to a client offering only
/// `key_type`'s signature schemes.
pub fn served_leaf(endpoint: &Verify, sni: &str, key_type: KeyType) -> Result<Vec<u8>, Failure> {
    let addr = endpoint
        .address
        .to_socket_addrs()
        .map_err(Failure::Resolve)?
        .next()
        .ok_or(Failure::NoAddress)?;
    let chain = served_chain(addr, endpoint.protocol, sni, key_type)?;
    chain
        .into_iter()
        .next()
        .map(|c| c.as_ref().to_vec())
        .ok_or(Failure::NoCertificate)
}

/// The whole chain (leaf first, as sent) `addr` presents after `protocol`'s
/// plain-text part to a client sending `sni` and offering only `key_type`'s
/// signature schemes (every scheme of the provider for [`KeyType::Other`]).
/// Any chain is accepted; the handshake signature is still checked.
pub fn served_chain(
    addr: SocketAddr,
    protocol: VerifyProtocol,
    sni: &str,
    key_type: KeyType,
) -> Result<Vec<CertificateDer<'static>>, Failure> {
    served_chain_with(addr, protocol, sni, Arc::new(client_config(key_type)?))
}

/// Like [`served_chain`], with the handshake's checks left to `config`:
/// with a validating verifier (MTA-STS's STARTTLS check) a chain that does
/// not validate for `sni` fails the handshake, the verifier's reason in
/// [`Failure::Handshake`].
pub fn served_chain_with(
    addr: SocketAddr,
    protocol: VerifyProtocol,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let mut tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(Failure::Connect)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(Failure::Socket)?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(Failure::Socket)?;
    starttls(&mut tcp, protocol)?;

    let name = ServerName::try_from(sni.to_owned()).map_err(|source| Failure::Sni {
        sni: sni.to_owned(),
        source,
    })?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(Failure::Tls)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(Failure::Handshake)?;
    }
    let chain: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    if chain.is_empty() {
        return Err(Failure::NoCertificate);
    }
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(chain)
}

/// The plain-text part of the protocol, up to where TLS starts.
fn starttls(tcp: &mut TcpStream, protocol: VerifyProtocol) -> Result<(), Failure> {
    match protocol {
        VerifyProtocol::Tls => Ok(()),
        VerifyProtocol::Smtp => {
            expect_smtp(tcp, "220")?;
            send(tcp, "EHLO mxkeys.invalid\r\n")?;
            expect_smtp(tcp, "250")?;
            send(tcp, "STARTTLS\r\n")?;
            expect_smtp(tcp, "220")
        }
        VerifyProtocol::Imap => {
            let greeting = read_line(tcp)?;
            if !greeting.starts_with("* OK") {
                return Err(Failure::Greeting {
                    protocol: "IMAP",
                    line: greeting,
                });
            }
            send(tcp, "M1 STARTTLS\r\n")?;
            loop {
                let line = read_line(tcp)?;
                if line.starts_with("M1 OK") {
                    return Ok(());
                }
                if line.starts_with("M1 ") {
                    return Err(Failure::StartTlsRefused {
                        command: "STARTTLS",
                        line,
                    });
                }
            }
        }
        VerifyProtocol::Pop3 => {
            let greeting = read_line(tcp)?;
            if !greeting.starts_with("+OK") {
                return Err(Failure::Greeting {
                    protocol: "POP3",
                    line: greeting,
                });
            }
            send(tcp, "STLS\r\n")?;
            let line = read_line(tcp)?;
            if line.starts_with("+OK") {
                Ok(())
            } else {
                Err(Failure::StartTlsRefused {
                    command: "STLS",
                    line,
                })
            }
        }
    }
}

fn send(tcp: &mut TcpStream, line: &str) -> Result<(), Failure> {
    tcp.write_all(line.as_bytes()).map_err(Failure::Write)
}

/// Reads one CRLF-terminated line byte by byte (nothing past it is
/// consumed: the TLS handshake follows on the same socket).
fn read_line(tcp: &mut TcpStream) -> Result<String, Failure> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        match tcp.read(&mut byte) {
            Ok(0) => return Err(Failure::Closed),
            Ok(_) if byte[0] == b'\n' => {
                return Ok(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(Failure::Read(e)),
        }
    }
    Err(Failure::LineTooLong)
}

/// Reads an SMTP reply (all its continuation lines) and checks its code.
fn expect_smtp(tcp: &mut TcpStream, code: &'static str) -> Result<(), Failure> {
    loop {
        let line = read_line(tcp)?;
        if line.len() < 4 || !line.starts_with(code) {
            return Err(Failure::Smtp {
                line,
                expected: code,
            });
        }
        if line.as_bytes()[3] == b' ' {
            return Ok(());
        }
    }
}

/// A client that offers only `key_type`'s signature schemes and accepts
/// any certificate (the comparison happens afterwards).
fn client_config(key_type: KeyType) -> Result<rustls::ClientConfig, Failure> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(CompareOnly {
        algorithms: provider.signature_verification_algorithms,
        schemes: schemes_for(key_type),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Failure::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn schemes_for(key_type: KeyType) -> Vec<SignatureScheme> {
    use SignatureScheme::*;
    match key_type {
        KeyType::Rsa { .. } => vec![
            RSA_PSS_SHA256,
            RSA_PSS_SHA384,
            RSA_PSS_SHA512,
            RSA_PKCS1_SHA256,
            RSA_PKCS1_SHA384,
            RSA_PKCS1_SHA512,
        ],
        KeyType::Ecdsa(_) => vec![
            ECDSA_NISTP256_SHA256,
            ECDSA_NISTP384_SHA384,
            ECDSA_NISTP521_SHA512,
        ],
        KeyType::Ed25519 => vec![ED25519],
        KeyType::Other => CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms.supported_schemes())
            .unwrap_or_else(|| {
                rustls::crypto::aws_lc_rs::default_provider()
                    .signature_verification_algorithms
                    .supported_schemes()
            }),
    }
}

#[derive(Debug)]
struct CompareOnly {
    algorithms: WebPkiSupportedAlgorithms,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for CompareOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
