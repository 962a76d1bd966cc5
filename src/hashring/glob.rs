//! Tenant globs with the semantics of Go's `path/filepath.Match` (Unix): `*` matches any run
//! without `/`, `?` one code point other than `/`, `[...]` a class with ranges and `^`
//! negation, `\` escapes; the whole name must match. Literal bytes compare byte by byte and
//! `?`/classes consume one code point, exactly as Go does, so odd inputs match the same way.

/// Whether `pattern` matches all of `name`. A malformed pattern matches nothing (the hashrings
/// loader rejects those up front with [`is_valid`]).
pub fn matches(pattern: &str, name: &str) -> bool {
    match_bytes(pattern.as_bytes(), name.as_bytes()).unwrap_or(false)
}

/// Whether `pattern` is well formed (Go would not answer `ErrBadPattern` for it).
pub fn is_valid(pattern: &str) -> bool {
    let mut p = pattern.as_bytes();
    while !p.is_empty() {
        let (_, chunk, rest) = scan_chunk(p);
        p = rest;
        if match_chunk(chunk, b"").is_err() {
            return false;
        }
    }
    true
}

#[derive(Debug)]
struct BadPattern;

fn match_bytes(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let (t, ok) = match_chunk(chunk, name)?;
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (t, ok) = match_chunk(chunk, &name[i + 1..])?;
                if ok {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                i += 1;
            }
        }
        // Go checks the rest of the pattern for syntax errors before answering "no".
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Splits off leading stars and the chunk up to the next star outside a class.
fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while pattern.first() == Some(&b'*') {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// One code point as Go's `utf8.DecodeRune` reads it: U+FFFD and one byte when invalid.
fn decode_rune(b: &[u8]) -> (char, usize) {
    for len in 1..=b.len().min(4) {
        if let Ok(s) = std::str::from_utf8(&b[..len]) {
            if let Some(c) = s.chars().next() {
                return (c, len);
            }
        }
    }
    (char::REPLACEMENT_CHARACTER, 1.min(b.len()))
}

/// Matches a star-free chunk against the start of `s`; returns the rest of `s` on success.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<(&'a [u8], bool), BadPattern> {
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = '\0';
                if !failed {
                    let (c, n) = decode_rune(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_escaped(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_escaped(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let lit = if c == b'\\' {
                    chunk = &chunk[1..];
                    *chunk.first().ok_or(BadPattern)?
                } else {
                    c
                };
                if !failed {
                    if lit != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok(if failed { (&[], false) } else { (s, true) })
}

/// One (possibly escaped) code point of a class; the chunk must go on after it.
fn get_escaped(mut chunk: &[u8]) -> Result<(char, &[u8]), BadPattern> {
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        _ => {}
    }
    let (r, n) = decode_rune(chunk);
    if r == char::REPLACEMENT_CHARACTER && n == 1 {
        return Err(BadPattern);
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_filepath_match_cases() {
        // (pattern, name, match, valid) — the cases of Go's own match tests that apply on Unix.
        let cases: &[(&str, &str, bool, bool)] = &[
            ("abc", "abc", true, true),
            ("*", "abc", true, true),
            ("*c", "abc", true, true),
            ("a*", "a", true, true),
            ("a*", "abc", true, true),
            ("a*", "ab/c", false, true),
            ("a*/b", "abc/b", true, true),
            ("a*/b", "a/c/b", false, true),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true, true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true, true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false, true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false, true),
            ("a*b?c*x", "abxbbxdbxebxczzx", true, true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false, true),
            ("ab[c]", "abc", true, true),
            ("ab[b-d]", "abc", true, true),
            ("ab[e-g]", "abc", false, true),
            ("ab[^c]", "abc", false, true),
            ("ab[^b-d]", "abc", false, true),
            ("ab[^e-g]", "abc", true, true),
            ("a\\*b", "a*b", true, true),
            ("a\\*b", "ab", false, true),
            ("a?b", "a☺b", true, true),
            ("a[^a]b", "a☺b", true, true),
            ("a???b", "a☺b", false, true),
            ("a[^a][^a][^a]b", "a☺b", false, true),
            ("[a-ζ]*", "α", true, true),
            ("*[a-ζ]", "A", false, true),
            ("a?b", "a/b", false, true),
            ("a*b", "a/b", false, true),
            ("[\\]a]", "]", true, true),
            ("[\\-]", "-", true, true),
            ("[x\\-]", "x", true, true),
            ("[x\\-]", "-", true, true),
            ("[x\\-]", "z", false, true),
            ("[\\-x]", "x", true, true),
            ("[\\-x]", "-", true, true),
            ("[\\-x]", "a", false, true),
            ("[]a]", "]", false, false),
            ("[-]", "-", false, false),
            ("[x-]", "x", false, false),
            ("[x-]", "-", false, false),
            ("[x-]", "z", false, false),
            ("[-x]", "x", false, false),
            ("[-x]", "-", false, false),
            ("[-x]", "a", false, false),
            ("\\", "a", false, false),
            ("[a-b-c]", "a", false, false),
            ("[", "a", false, false),
            ("[^", "a", false, false),
            ("[^bc", "a", false, false),
            ("a[", "a", false, false),
            ("a[", "ab", false, false),
            ("a[", "x", false, false),
            ("a/b[", "x", false, false),
            ("*x", "xxx", true, true),
            ("[!a]", "b", false, true),
            ("[!a]", "!", true, true),
        ];
        for &(p, n, want, valid) in cases {
            assert_eq!(matches(p, n), want, "{p:?} vs {n:?}");
            assert_eq!(is_valid(p), valid, "{p:?} validity");
        }
    }

    proptest! {
        #[test]
        fn star_and_question_agree_with_a_regex(
            pattern in "[ab*?]{0,6}",
            name in "[ab/]{0,6}",
        ) {
            let re: String = pattern
                .chars()
                .map(|c| match c {
                    '*' => "[^/]*".to_string(),
                    '?' => "[^/]".to_string(),
                    c => c.to_string(),
                })
                .collect();
            let re = regex::Regex::new(&format!("^{re}$")).unwrap();
            prop_assert_eq!(matches(&pattern, &name), re.is_match(&name));
        }
    }
}
