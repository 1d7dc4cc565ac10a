//! Strings callers send: one bound per kind of field, the rule for free text, and how
//! such a string is shown in logs and messages. Pure.
//!
//! Every caller-supplied string is checked against its bound at the edge (the gRPC
//! service) before anything else reads it, so no oversized value reaches a query, an
//! audit row, an error message or a log line. Free text (reasons, comments) may not hold
//! characters that are invisible or reorder what is printed: control characters (Unicode
//! category Cc) and format characters (Cf: bidirectional overrides such as U+202E,
//! zero-width joiners, U+FEFF...), nor line or paragraph separators.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

/// Role, user and group names.
pub const MAX_NAME_LEN: usize = 64;
/// One principal.
pub const MAX_PRINCIPAL_LEN: usize = 64;
/// Principals in one request (the certificate limit; more is refused, not cut).
pub const MAX_PRINCIPALS: usize = 32;
/// Reasons and comments.
pub const MAX_FREE_TEXT_LEN: usize = 1024;
/// Request ids (ULIDs are 26).
pub const MAX_ID_LEN: usize = 64;
/// A public key in OpenSSH text.
pub const MAX_PUBLIC_KEY_LEN: usize = 16 * 1024;
/// What a log line or message shows of a caller's string at most, in characters.
pub const SHOWN_CHARS: usize = 64;

/// A field over its bound: the message names the field and the limit, never the value.
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "{field} is {} bytes long; the limit is {max} bytes",
            value.len()
        ));
    }
    Ok(())
}

/// Whether `c` is invisible or changes how the text around it is displayed.
pub fn hidden(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// Checks free text (a reason or comment): within [`MAX_FREE_TEXT_LEN`], nothing
/// [`hidden`]. The message says what to fix and names the offending code point.
pub fn free_text(field: &str, value: &str) -> Result<(), String> {
    bounded(field, value, MAX_FREE_TEXT_LEN)?;
    if let Some(c) = value.chars().find(|c| hidden(*c)) {
        return Err(format!(
            "{field} contains U+{:04X}, an invisible or control character; use plain text",
            u32::from(c)
        ));
    }
    Ok(())
}

/// `value` as it may appear in a log line or message: at most [`SHOWN_CHARS`]
/// characters, [`hidden`] ones and quotes escaped, a longer value cut with its length.
pub fn shown(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(SHOWN_CHARS * 2));
    for (i, c) in value.chars().enumerate() {
        if i == SHOWN_CHARS {
            out.push_str(&format!("...({} bytes)", value.len()));
            break;
        }
        if hidden(c) || c == '\\' || c == '"' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` on one line: line breaks (as in an error's context chain) become `; `, so a log
/// entry is one line in files and journald.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A Unix time as RFC 3339 UTC (`2026-11-24T01:00:00Z`), for messages about expiry.
pub fn fmt_time(at: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field_and_limit_not_the_value() {
        assert!(bounded("role", &"r".repeat(64), MAX_NAME_LEN).is_ok());
        let e = bounded("role", &"secretish".repeat(100), MAX_NAME_LEN).unwrap_err();
        assert_eq!(e, "role is 900 bytes long; the limit is 64 bytes");
    }

    #[test]
    fn format_and_control_characters_are_refused_in_free_text() {
        for bad in [
            "INC-1 \u{202E}gnp.exe",
            "INC-1\u{200B}",
            "INC-1\u{2066}x\u{2069}",
            "\u{FEFF}INC-1",
            "INC-1\u{00AD}",
            "INC-1\u{E0041}",
            "INC-1\u{2028}",
            "INC-1\u{1B}[31m",
            "INC-1\n",
            "INC-1\u{85}",
        ] {
            let e = free_text("reason", bad).unwrap_err();
            assert!(e.contains("U+"), "{bad:?}: {e}");
        }
        assert!(free_text("reason", "INC-4312 Übergang 数据库 — ok").is_ok());
    }

    #[test]
    fn shown_escapes_and_truncates() {
        assert_eq!(shown("a\u{202E}b\"c"), "a\\u{202e}b\\\"c");
        let long = shown(&"x".repeat(60_000));
        assert!(long.len() < 100, "{}", long.len());
        assert!(long.ends_with("...(60000 bytes)"));
    }
}
