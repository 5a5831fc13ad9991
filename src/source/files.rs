//! Plain files: a certificate (leaf first, maybe with its chain), a key,
//! and an optional separate chain file.

use std::path::Path;

use super::{Harvest, Reader};

pub fn read(reader: &Reader, cert: &Path, key: &Path, chain: Option<&Path>) -> Harvest {
    let mut harvest = Harvest::default();
    let entry = |p: &Path| Some(p.display().to_string());
    let certs = super::read_pem_certs(cert).map_err(|r| reader.error(entry(cert), r));
    let key_result = super::read_pem_key(key).map_err(|r| reader.error(entry(key), r));
    let extra = chain
        .map(|c| super::read_pem_certs(c).map_err(|r| reader.error(entry(c), r)))
        .transpose();
    match (certs, key_result, extra) {
        (Ok(mut certs), Ok(key), Ok(extra)) => {
            certs.extend(extra.unwrap_or_default());
            match reader.pem_candidate(cert.display().to_string(), 0, certs, key) {
                Ok(c) => harvest.candidates.push(c),
                Err(e) => harvest.errors.push(e),
            }
        }
        (certs, key, extra) => {
            harvest.errors.extend(certs.err());
            harvest.errors.extend(key.err());
            harvest.errors.extend(extra.err());
        }
    }
    harvest
}
