//! lego's output: `certificates/NAME.crt` (leaf plus issuer bundle unless
//! lego ran with `--no-bundle`), `NAME.key`, `NAME.issuer.crt`. A wildcard
//! `*.example.com` is stored as `_.example.com`.

use std::path::Path;

use super::{Harvest, Reader};

/// `path` is lego's `--path` directory or its `certificates/` directory.
pub fn read(reader: &Reader, path: &Path) -> Harvest {
    let mut harvest = Harvest::default();
    let nested = path.join("certificates");
    let dir = if nested.is_dir() {
        nested
    } else {
        path.to_owned()
    };
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".crt") && !n.ends_with(".issuer.crt"))
            .collect(),
        Err(e) => {
            let entry = (dir != path).then(|| dir.display().to_string());
            harvest
                .errors
                .push(reader.error(entry, super::io_reason(&e)));
            return harvest;
        }
    };
    names.sort();
    for (index, crt_name) in names.iter().enumerate() {
        let stem = crt_name.trim_end_matches(".crt");
        let entry = format!("certificates/{crt_name}");
        let crt = dir.join(crt_name);
        let key = dir.join(format!("{stem}.key"));
        let issuer = dir.join(format!("{stem}.issuer.crt"));
        let certs = super::read_pem_certs(&crt).map_err(|r| reader.error(Some(entry.clone()), r));
        let key = super::read_pem_key(&key)
            .map_err(|r| reader.error(Some(format!("certificates/{stem}.key")), r));
        match (certs, key) {
            (Ok(mut certs), Ok(key)) => {
                // With --no-bundle the .crt holds only the leaf.
                if certs.len() == 1
                    && issuer.exists()
                    && let Ok(more) = super::read_pem_certs(&issuer)
                {
                    certs.extend(more);
                }
                match reader.pem_candidate(entry, index, certs, key) {
                    Ok(c) => harvest.candidates.push(c),
                    Err(e) => harvest.errors.push(e),
                }
            }
            (certs, key) => {
                harvest.errors.extend(certs.err());
                harvest.errors.extend(key.err());
            }
        }
    }
    harvest
}
