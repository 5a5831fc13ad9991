//! `status --html` and `GET /status`: one self-contained HTML page from a
//! gathered [`Status`] (pure). Written by issue 20's wave.

use super::Status;

/// The page for `status`.
pub fn render(status: &Status) -> String {
    let _ = status;
    String::new()
}
