//! Plain files: a certificate (leaf first, maybe with its chain), a key,
//! and an optional separate chain file.

use std::path::Path;

use super::{Harvest, Intermediates, Reader};

pub fn read(reader: &Reader, cert: &Path, key: &Path, chain: Option<&Path>) -> Harvest {
    let mut harvest = Harvest::default();
    let name = |p: &Path| p.display().to_string();
    let intermediates = match chain {
        Some(path) => Intermediates::File {
            path,
            entry: name(path),
        },
        None => Intermediates::InCertFile,
    };
    reader.add_pem_files(
        &mut harvest,
        (name(cert), 0),
        (cert, name(cert)),
        (key, name(key)),
        intermediates,
    );
    harvest
}
