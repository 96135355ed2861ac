//! Debian version order (Debian Policy §5.6.12), as `dpkg --compare-versions`
//! implements it: `[epoch:]upstream[-revision]`, compared part by part, each
//! part as alternating non-digit runs (letters before other characters, `~`
//! before everything, even the end) and numbers compared by value. Kernel
//! release strings (`6.1.0-18-amd64`, `6.8.12-4-pve`) order correctly under
//! the same rules. Pure.

use std::cmp::Ordering;

/// The weight of one non-digit character (0 = end of the part or a digit).
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp` over one part (upstream version or revision).
fn part_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied();
    let digit = |s: &[u8], k: usize| at(s, k).is_some_and(|c| c.is_ascii_digit());
    while i < a.len() || j < b.len() {
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (ac, bc) = (order(at(a, i)), order(at(b, j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == Some(b'0') {
            i += 1;
        }
        while at(b, j) == Some(b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

/// (epoch, upstream, revision) of a version string.
fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.bytes().all(|b| b.is_ascii_digit()) && !e.is_empty() => {
            (e.parse().unwrap_or(u64::MAX), r)
        }
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((up, rev)) => (epoch, up, rev),
        None => (epoch, rest, ""),
    }
}

/// Compare two Debian versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| part_cmp(ua.as_bytes(), ub.as_bytes()))
        .then_with(|| part_cmp(ra.as_bytes(), rb.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::{Equal, Greater, Less};

    #[test]
    fn posture_debver_table() {
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.1", "1.0", Greater),
            ("1.0-1", "1.0-2", Less),
            ("1.0~rc1", "1.0", Less),
            ("1.0", "1.0+deb12u1", Less),
            ("1.0+deb12u1", "1.0+deb12u2", Less),
            ("1:0.9", "2.0", Greater),
            ("0:2.0", "2.0", Equal),
            ("1.00", "1.0", Equal),
            ("1.10", "1.9", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0a", "1.0+", Less),
            ("1.0~~", "1.0~", Less),
            ("5.2.15-2+b8", "5.2.15-2+b13", Less),
            ("1.10.1-3", "1.10.1-3+deb12u1", Less),
            ("6.1.76-1", "6.1.76-1+deb12u1", Less),
            // Kernel release strings.
            ("6.1.0-18-amd64", "6.1.0-21-amd64", Less),
            ("6.1.0-9-amd64", "6.1.0-10-amd64", Less),
            ("6.8.12-4-pve", "6.8.12-10-pve", Less),
            ("6.5.13-6-pve", "6.8.12-1-pve", Less),
            ("5.15.158-2-pve", "6.2.16-20-pve", Less),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare(a, b), want, "{a} vs {b}");
            assert_eq!(compare(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    /// The same verdicts as `dpkg --compare-versions` on versions made of the
    /// characters that matter (digits, letters, `.+-~:`).
    #[test]
    fn posture_debver_agrees_with_dpkg() {
        let dpkg = crate_test_require("dpkg");
        // A small fixed pseudo-random sequence: reproducible, no extra crates.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let alphabet = b"0123456789.+~ab";
        let mut gen = || {
            let mut v = String::new();
            if next(5) == 0 {
                v.push_str(&format!("{}:", next(3)));
            }
            v.push(char::from(b'0' + u8::try_from(next(10)).unwrap()));
            for _ in 0..next(6) {
                v.push(char::from(alphabet[usize::try_from(next(15)).unwrap()]));
            }
            if next(2) == 0 {
                v.push('-');
                v.push(char::from(b'0' + u8::try_from(next(10)).unwrap()));
                for _ in 0..next(4) {
                    v.push(char::from(alphabet[usize::try_from(next(15)).unwrap()]));
                }
            }
            v
        };
        for _ in 0..150 {
            let (a, b) = (gen(), gen());
            let lt = std::process::Command::new(&dpkg)
                .args(["--compare-versions", &a, "lt", &b])
                .status()
                .unwrap()
                .success();
            let eq = std::process::Command::new(&dpkg)
                .args(["--compare-versions", &a, "eq", &b])
                .status()
                .unwrap()
                .success();
            let want = if lt {
                Less
            } else if eq {
                Equal
            } else {
                Greater
            };
            assert_eq!(compare(&a, &b), want, "{a:?} vs {b:?}");
        }
    }

    fn crate_test_require(program: &str) -> std::path::PathBuf {
        ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("`{program}` is needed by this test (Debian's dpkg)"))
    }
}
