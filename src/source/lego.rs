//! lego's output: `certificates/NAME.crt` (leaf plus issuer bundle unless
//! lego ran with `--no-bundle`), `NAME.key`, `NAME.issuer.crt`. A wildcard
//! `*.example.com` is stored as `_.example.com`.

use std::path::Path;

use super::{Harvest, Intermediates, Reader};

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
        reader.add_pem_files(
            &mut harvest,
            (entry.clone(), index),
            (&crt, entry),
            (&key, format!("certificates/{stem}.key")),
            // With --no-bundle the .crt holds only the leaf.
            Intermediates::IfLeafOnly(&issuer),
        );
    }
    harvest
}
