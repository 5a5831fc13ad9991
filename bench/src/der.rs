//! The few DER encoding and decoding helpers the generator needs for
//! extensions rcgen does not write itself (authority information access,
//! certificate policies, signed certificate timestamps) and for re-wrapping
//! PKCS#8 keys the way Traefik stores them (SEC1 `EC PRIVATE KEY`, PKCS#1
//! account key).

/// DER tag numbers used here.
pub mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
}

/// Encodes one TLV with a definite length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of already encoded elements.
pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag::SEQUENCE, &parts.concat())
}

/// An OBJECT IDENTIFIER from its arcs.
pub fn oid(arcs: &[u64]) -> Vec<u8> {
    assert!(arcs.len() >= 2, "an OID has at least two arcs");
    let mut body = Vec::new();
    base128(&mut body, arcs[0] * 40 + arcs[1]);
    for arc in &arcs[2..] {
        base128(&mut body, *arc);
    }
    tlv(tag::OID, &body)
}

fn base128(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    let last = tmp.len() - 1;
    for (j, b) in tmp.iter().enumerate().skip(i) {
        out.push(if j == last { *b } else { b | 0x80 });
    }
}

/// A positive INTEGER from big-endian magnitude bytes.
pub fn uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(magnitude.len().saturating_sub(1));
    let m = &magnitude[skip..];
    let mut body = Vec::with_capacity(m.len() + 1);
    if m.first().is_some_and(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(m);
    tlv(tag::INTEGER, &body)
}

/// Splits one TLV off the front of `input`: `(tag, content, rest)`.
pub fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > std::mem::size_of::<usize>() || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The `privateKey` OCTET STRING content of a PKCS#8 v1/v2 PrivateKeyInfo:
/// for RSA that is the PKCS#1 RSAPrivateKey, for EC the SEC1 ECPrivateKey
/// (often without its curve parameters).
pub fn pkcs8_inner_key(pkcs8: &[u8]) -> Option<&[u8]> {
    let (t, body, _) = read_tlv(pkcs8)?;
    if t != tag::SEQUENCE {
        return None;
    }
    let (t, _version, rest) = read_tlv(body)?;
    if t != tag::INTEGER {
        return None;
    }
    let (t, _alg, rest) = read_tlv(rest)?;
    if t != tag::SEQUENCE {
        return None;
    }
    let (t, key, _) = read_tlv(rest)?;
    (t == tag::OCTET_STRING).then_some(key)
}

/// The private scalar of a SEC1 ECPrivateKey (`SEQUENCE { 1, OCTET STRING d, ... }`).
pub fn sec1_private_scalar(sec1: &[u8]) -> Option<&[u8]> {
    let (t, body, _) = read_tlv(sec1)?;
    if t != tag::SEQUENCE {
        return None;
    }
    let (t, _version, rest) = read_tlv(body)?;
    if t != tag::INTEGER {
        return None;
    }
    let (t, d, _) = read_tlv(rest)?;
    (t == tag::OCTET_STRING).then_some(d)
}

/// A complete SEC1 ECPrivateKey, with the named-curve parameters and the
/// public key, as OpenSSL and Go's `x509.MarshalECPrivateKey` write it.
pub fn sec1_private_key(scalar: &[u8], curve_oid: &[u64], public_point: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(public_point.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(public_point);
    seq(&[
        &tlv(tag::INTEGER, &[1]),
        &tlv(tag::OCTET_STRING, scalar),
        &tlv(0xa0, &oid(curve_oid)),
        &tlv(0xa1, &tlv(tag::BIT_STRING, &bits)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_oid_and_lengths() {
        // 1.2.840.10045.3.1.7 (prime256v1)
        assert_eq!(
            oid(&[1, 2, 840, 10045, 3, 1, 7]),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        let long = tlv(tag::OCTET_STRING, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (t, c, rest) = read_tlv(&long).unwrap();
        assert_eq!((t, c.len(), rest.len()), (0x04, 300, 0));
        assert_eq!(uint(&[0x00, 0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0x00, 0x00]), [0x02, 0x01, 0x00]);
    }
}
