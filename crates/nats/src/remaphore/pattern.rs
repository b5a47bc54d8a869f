//! Destination patterns, as remaphore matches them, without its faults.
//!
//! A local destination `s` matches a pattern `p` when, split on `.`:
//! every segment matches (`*` any one segment; a segment with a `*` inside
//! matches by prefix and suffix, which may not overlap); a final `**`
//! matches one or more further segments (a lone `**` matches everything);
//! otherwise the segment counts are equal. A local destination containing
//! `*` never matches.
//!
//! The original panics on a segment whose prefix or suffix is longer than
//! the local segment (so any authorised peer could crash receivers with one
//! message) and lets prefix and suffix overlap (`abc*c` matched `abc`).
//! Here every byte string is a valid input and the result is only ever
//! true or false.

fn segment_matches(s: &[u8], p: &[u8]) -> bool {
    if s == p || p == b"*" {
        return true;
    }
    match p.iter().position(|&b| b == b'*') {
        Some(n) => {
            let (pre, post) = (&p[..n], &p[n + 1..]);
            s.len() >= pre.len() + post.len() && s.starts_with(pre) && s.ends_with(post)
        }
        None => false,
    }
}

/// Does the local destination `local` match the message's `pattern`?
pub fn matches(local: &str, pattern: &str) -> bool {
    if local.contains('*') {
        return false;
    }
    let sf: Vec<&[u8]> = local.as_bytes().split(|&b| b == b'.').collect();
    let pf: Vec<&[u8]> = pattern.as_bytes().split(|&b| b == b'.').collect();
    if sf.len() < pf.len() {
        return false;
    }
    let last = pf.len() - 1;
    for (i, (s, p)) in sf.iter().zip(pf.iter()).enumerate() {
        if *p == b"**" {
            return i == last;
        }
        if !segment_matches(s, p) {
            return false;
        }
    }
    sf.len() == pf.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn remaphore_semantics_on_valid_patterns() {
        let yes = [
            ("com.test.a", "com.test.*"),
            ("com.test.a", "**"),
            ("a", "**"),
            ("com.test.a", "com.**"),
            ("com.test.a", "com.test.a"),
            ("com.crypto.eu.us", "com.crypto.*.us"),
            ("net.crypto.internal.us.002", "net.crypto.internal.**"),
            ("host-01.x", "host-*.x"),
            ("host-01.x", "*-01.x"),
            ("abc", "a*c"),
            ("ac", "a*c"),
        ];
        for (s, p) in yes {
            assert!(matches(s, p), "{s} ~ {p}");
        }
        let no = [
            ("a.b", "a.b.**"),
            ("com.test", "com.test.*"),
            ("com.test.a.b", "com.test.*"),
            ("com.test.a", "com.**.a"),
            ("com.*", "com.*"),
            ("com.test.a", ""),
            ("abc", "abd"),
            ("host-01.x", "host-*.y"),
        ];
        for (s, p) in no {
            assert!(!matches(s, p), "{s} !~ {p}");
        }
    }

    #[test]
    fn crafted_pattern_longer_than_the_segment_does_not_panic_and_does_not_match() {
        // The original slices s[:len(pre)] and panics here.
        assert!(!matches("com.a", "com.abcdef*"));
        assert!(!matches("com.a", "com.*abcdef"));
        assert!(!matches("com.ab", "com.abc*xyz"));
    }

    #[test]
    fn prefix_and_suffix_may_not_overlap() {
        // The original matches `abc` against `abc*c`.
        assert!(!matches("abc", "abc*c"));
        assert!(matches("abcc", "abc*c"));
    }

    #[test]
    fn any_bytes_never_panic() {
        let pieces = [
            "", ".", "*", "**", "a", "é", "\u{0}", "*a*", "a**", "..", "ab",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let p = format!("{a}{b}{c}");
                        let s = format!("{c}{d}{a}");
                        let _ = matches(&s, &p);
                        let _ = matches(&p, &s);
                    }
                }
            }
        }
    }
}
