//! Bounded display of untrusted values: an echoed tenant, label or regex is cut at
//! [`SHOWN_MAX_BYTES`] so that a hostile value cannot grow an error body, a gRPC status (clients
//! refuse metadata over 16 KiB) or a log line without bound.

use std::fmt;

/// Longest prefix of an untrusted value that is echoed.
pub const SHOWN_MAX_BYTES: usize = 256;

/// Displays a value as it is when short, else its first [`SHOWN_MAX_BYTES`] (cut on a character
/// boundary) followed by `…(cut, N bytes)`. `{:?}` quotes and escapes the shown prefix.
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl<'a> Shown<'a> {
    fn parts(&self) -> (&'a str, Option<usize>) {
        let s = self.0;
        if s.len() <= SHOWN_MAX_BYTES {
            return (s, None);
        }
        let mut end = SHOWN_MAX_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        (&s[..end], Some(s.len()))
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, cut) = self.parts();
        f.write_str(head)?;
        match cut {
            Some(n) => write!(f, "…(cut, {n} bytes)"),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, cut) = self.parts();
        fmt::Debug::fmt(head, f)?;
        match cut {
            Some(n) => write!(f, "…(cut, {n} bytes)"),
            None => Ok(()),
        }
    }
}

/// Bytes that may not be UTF-8, shown lossily and bounded like [`Shown`].
pub fn shown_bytes(b: &[u8]) -> String {
    let head = &b[..b.len().min(SHOWN_MAX_BYTES)];
    let mut s = String::from_utf8_lossy(head).into_owned();
    if b.len() > SHOWN_MAX_BYTES {
        s.push_str(&format!("…(cut, {} bytes)", b.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_shown_whole_and_long_ones_cut_on_a_char_boundary() {
        assert_eq!(Shown("team-a").to_string(), "team-a");
        assert_eq!(format!("{:?}", Shown("a\"b")), r#""a\"b""#);
        let long = "é".repeat(300); // 600 bytes, 2 per char
        let s = Shown(&long).to_string();
        assert!(s.ends_with("…(cut, 600 bytes)"), "{s}");
        assert_eq!(s.chars().filter(|&c| c == 'é').count(), 128);
        assert!(format!("{:?}", Shown(&long)).len() < SHOWN_MAX_BYTES + 40);
        let b = vec![b'x'; 100_000];
        assert_eq!(
            shown_bytes(&b).len(),
            SHOWN_MAX_BYTES + "…(cut, 100000 bytes)".len()
        );
    }
}
