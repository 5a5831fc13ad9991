//! TXT values and their character-strings.
//!
//! A TXT record holds one or more character-strings of at most 255 bytes;
//! verifiers (DKIM, ACME) concatenate them without separator. mxkeys handles
//! whole values: split on write, joined before any comparison.

/// Largest character-string in a TXT record.
pub const MAX_STRING: usize = 255;

/// Splits a value into character-strings of at most 255 bytes, never
/// inside a UTF-8 character. An empty value is one empty string.
pub fn split(value: &str) -> Vec<&str> {
    if value.is_empty() {
        return vec![""];
    }
    let mut out = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        let mut end = rest.len().min(MAX_STRING);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out
}

/// Joins character-strings into the value verifiers see.
pub fn join<S: AsRef<[u8]>>(strings: &[S]) -> String {
    let bytes: Vec<u8> = strings
        .iter()
        .flat_map(|s| s.as_ref().iter().copied())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Zone-file presentation: quoted strings of at most 255 bytes separated
/// by spaces, with `"` and `\` escaped.
pub fn zone_file_strings(value: &str) -> String {
    split(value)
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_at_255_bytes_and_join_back() {
        let value = "v=DKIM1; k=rsa; p=".to_owned() + &"A".repeat(392);
        let parts = split(&value);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len(), 255);
        assert!(parts.iter().all(|p| p.len() <= MAX_STRING));
        assert_eq!(join(&parts), value);
        assert_eq!(split(""), vec![""]);
        assert_eq!(split(&"x".repeat(255)).len(), 1);
        assert_eq!(split(&"x".repeat(256)).len(), 2);
    }

    #[test]
    fn split_never_cuts_a_character() {
        let value = "é".repeat(200); // 400 bytes
        for part in split(&value) {
            assert!(part.len() <= MAX_STRING);
            assert!(std::str::from_utf8(part.as_bytes()).is_ok());
        }
        assert_eq!(join(&split(&value)), value);
    }

    #[test]
    fn zone_file_form_quotes_and_escapes() {
        assert_eq!(zone_file_strings("a\"b\\c"), r#""a\"b\\c""#);
        let long = "y".repeat(300);
        assert_eq!(
            zone_file_strings(&long),
            format!("\"{}\" \"{}\"", "y".repeat(255), "y".repeat(45))
        );
    }
}
