//! Verifying what a service serves: connect like a mail client (STARTTLS
//! for SMTP, IMAP and POP3, or TLS from the first byte), offer only the
//! signature schemes of one key type, and compare the leaf the server
//! presents with the one mxkeys installed.
//!
//! The certificate is not validated against a root store: the question is
//! "is this exactly the certificate we installed", not "is it trusted". The
//! handshake signature is still checked, so the server must hold the key.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
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

/// Keeps asking `endpoint` (offering only `key_type`'s signature schemes)
/// until it serves `expected_leaf` or `timeout` passes. The error says what
/// was served instead, or why no handshake completed.
pub fn wait_for(
    endpoint: &Verify,
    sni: &str,
    key_type: KeyType,
    expected_leaf: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = served_leaf(endpoint, sni, key_type).and_then(|leaf| {
            if leaf == expected_leaf {
                Ok(())
            } else {
                Err(format!(
                    "serves {} instead of {}",
                    crate::cert::fingerprint(&leaf),
                    crate::cert::fingerprint(expected_leaf)
                ))
            }
        });
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() + RETRY_PAUSE >= deadline => {
                return Err(format!(
                    "{} {}: {e}",
                    endpoint_name(endpoint),
                    endpoint.address
                ));
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
pub fn served_leaf(endpoint: &Verify, sni: &str, key_type: KeyType) -> Result<Vec<u8>, String> {
    let addr = endpoint
        .address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or("no address")?;
    let mut tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("cannot connect: {e}"))?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    starttls(&mut tcp, endpoint.protocol)?;

    let name = ServerName::try_from(sni.to_owned()).map_err(|e| format!("SNI {sni:?}: {e}"))?;
    let config = client_config(key_type)?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("the server presented no certificate")?;
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(leaf)
}

/// The plain-text part of the protocol, up to where TLS starts.
fn starttls(tcp: &mut TcpStream, protocol: VerifyProtocol) -> Result<(), String> {
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
                return Err(format!("unexpected IMAP greeting {greeting:?}"));
            }
            send(tcp, "M1 STARTTLS\r\n")?;
            loop {
                let line = read_line(tcp)?;
                if line.starts_with("M1 OK") {
                    return Ok(());
                }
                if line.starts_with("M1 ") {
                    return Err(format!("STARTTLS refused: {line:?}"));
                }
            }
        }
        VerifyProtocol::Pop3 => {
            let greeting = read_line(tcp)?;
            if !greeting.starts_with("+OK") {
                return Err(format!("unexpected POP3 greeting {greeting:?}"));
            }
            send(tcp, "STLS\r\n")?;
            let line = read_line(tcp)?;
            if line.starts_with("+OK") {
                Ok(())
            } else {
                Err(format!("STLS refused: {line:?}"))
            }
        }
    }
}

fn send(tcp: &mut TcpStream, line: &str) -> Result<(), String> {
    tcp.write_all(line.as_bytes())
        .map_err(|e| format!("write: {e}"))
}

/// Reads one CRLF-terminated line byte by byte (nothing past it is
/// consumed: the TLS handshake follows on the same socket).
fn read_line(tcp: &mut TcpStream) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        match tcp.read(&mut byte) {
            Ok(0) => return Err("the server closed the connection".to_owned()),
            Ok(_) if byte[0] == b'\n' => {
                return Ok(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Err("line too long".to_owned())
}

/// Reads an SMTP reply (all its continuation lines) and checks its code.
fn expect_smtp(tcp: &mut TcpStream, code: &str) -> Result<(), String> {
    loop {
        let line = read_line(tcp)?;
        if line.len() < 4 || !line.starts_with(code) {
            return Err(format!("SMTP server answered {line:?}, expected {code}"));
        }
        if line.as_bytes()[3] == b' ' {
            return Ok(());
        }
    }
}

/// A client that offers only `key_type`'s signature schemes and accepts
/// any certificate (the comparison happens afterwards).
fn client_config(key_type: KeyType) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(CompareOnly {
        algorithms: provider.signature_verification_algorithms,
        schemes: schemes_for(key_type),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
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
