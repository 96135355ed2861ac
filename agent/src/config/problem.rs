//! Configuration problems: what is wrong, where (file:line:col) and how to fix it.
//!
//! A problem's text goes to the terminal, the journal, the API's 400 reply
//! and the hash-chained audit log (a refused reload), where it can never be
//! redacted again. So a problem never carries a secret: the quoted source
//! line of a secret-bearing key (`connection`, any key named like a password,
//! secret, token, PIN or key, any value that holds `password=…`, URL
//! credentials or a PEM block, and the continuation lines of such a value)
//! shows `<redacted>` in place of the value, the value is cut out of the
//! message and hint, and every text is scrubbed of `password=…` and URL
//! credentials whatever made it. All of this happens when the problem is
//! made, so every consumer gets redacted text.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with the configuration, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in, when it is in one file.
    pub file: Option<PathBuf>,
    /// 1-based line and column, when known.
    pub line_col: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The offending source line, for a caret display.
    pub snippet: Option<String>,
}

impl Problem {
    /// A problem not tied to one position (e.g. a cross-section reference).
    pub fn general(message: impl Into<String>) -> Self {
        Problem {
            file: None,
            line_col: None,
            message: scrub_patterns(&message.into()),
            hint: None,
            snippet: None,
        }
    }

    /// A problem at a byte span of a source file (its line quoted, redacted
    /// if it carries a secret, whose value is also cut out of `message`).
    pub fn at(src: &Source, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, col) = src.line_col(span.start);
        let shown = src.shown_line(line);
        Problem {
            file: Some(src.path.clone()),
            line_col: Some((line, col)),
            message: shown.scrub(&message.into()),
            hint: None,
            snippet: shown.snippet,
        }
    }

    /// A problem about a whole file (unreadable, missing).
    pub fn in_file(path: &Path, message: impl Into<String>) -> Self {
        Problem {
            file: Some(path.to_owned()),
            ..Problem::general(message)
        }
    }

    /// Attach a hint saying how to fix the problem.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(scrub_patterns(&hint.into()));
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line_col) {
            (Some(p), Some((l, c))) => write!(f, "{}:{l}:{c}: ", p.display())?,
            (Some(p), None) => write!(f, "{}: ", p.display())?,
            _ => {}
        }
        write!(f, "{}", self.message)?;
        if let (Some(s), Some((_, c))) = (&self.snippet, self.line_col) {
            // A redacted line is shorter than the original: keep the caret on it.
            let width = c.min(s.chars().count() + 1);
            write!(f, "\n    | {s}\n    | {:>width$}", "^")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n    hint: {h}")?;
        }
        Ok(())
    }
}

/// Every problem found while loading; loading reports all of them, not just the first.
#[derive(Debug, Clone, Default, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The text of one configuration file, kept to turn byte spans into line:col.
#[derive(Debug, Clone)]
pub struct Source {
    /// Path as given (main file or drop-in).
    pub path: PathBuf,
    /// Full text.
    pub text: String,
}

impl Source {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }
}

/// Collects problems while validating one file.
pub struct Check<'a> {
    /// The file being checked.
    pub src: &'a Source,
    /// Problems found so far.
    pub problems: &'a mut Vec<Problem>,
    /// Whether files named outside `[luks]` (keys, certificates, secrets) are
    /// looked at on disk. The LUKS helper loads the configuration as root
    /// without `CAP_DAC_OVERRIDE`, so it cannot (and need not) reach the
    /// agent's 0700 key directory; it checks only the files it uses.
    pub other_files: bool,
    /// Who may own a secret file.
    pub owners: crate::fsx::Owners,
}

impl Check<'_> {
    /// Record a problem at `span`.
    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        let (line, _) = self.src.line_col(span.start);
        let hint = self.src.shown_line(line).scrub(&hint.into());
        let p = Problem::at(self.src, span, message).hint(hint);
        self.problems.push(p);
    }
}

/// What replaces a secret value in a problem.
pub const REDACTED: &str = "<redacted>";

/// A source line as a problem may show it.
#[derive(Debug, Default)]
pub struct Shown {
    /// The line, its secret value (if any) replaced by [`REDACTED`].
    pub snippet: Option<String>,
    /// Texts of the line that must not appear in the problem's message or hint.
    secrets: Vec<String>,
}

impl Shown {
    /// `text` without this line's secrets or any `password=…`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            out = out.replace(s.as_str(), REDACTED);
        }
        scrub_patterns(&out)
    }
}

impl Source {
    /// Line `line` (1-based) as a problem may quote it.
    pub fn shown_line(&self, line: usize) -> Shown {
        let mut open = Open::None;
        for (i, text) in self.text.lines().enumerate() {
            let (secret_from, next) = classify(text, open);
            if i + 1 == line {
                return match secret_from {
                    None => Shown {
                        snippet: Some(text.to_owned()),
                        secrets: vec![],
                    },
                    Some(at) => Shown {
                        snippet: Some(format!("{}{REDACTED}", &text[..at])),
                        secrets: secret_fragments(&text[at..]),
                    },
                };
            }
            open = next;
        }
        Shown::default()
    }
}

/// A value still open at the end of a line: its next lines continue it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Open {
    None,
    /// Inside `[`/`{` (depth), or a multi-line string (its quote).
    Brackets {
        depth: usize,
        secret: bool,
    },
    String {
        quote: char,
        secret: bool,
    },
}

/// Where the secret part of `line` starts (None: nothing secret) and what is
/// still open after it.
fn classify(line: &str, open: Open) -> (Option<usize>, Open) {
    let indent = line.len() - line.trim_start().len();
    let (secret, value_at, state) = match open {
        Open::Brackets { secret, .. } | Open::String { secret, .. } => {
            (secret || value_looks_secret(line), indent, open)
        }
        Open::None => {
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                return (None, Open::None);
            }
            match key_end(line) {
                // `key = value`: the value starts after `=` and its blanks.
                Some(eq) => {
                    let rest = &line[eq + 1..];
                    let at = eq + 1 + (rest.len() - rest.trim_start().len());
                    let secret = match key_secrecy(&line[..eq]) {
                        Secrecy::Secret => true,
                        // `api_token_id = "u@pve!t=SECRET"`: a secret pasted into its id.
                        Secrecy::AboutSecret => rest.contains('='),
                        Secrecy::None => false,
                    };
                    let secret = (secret || value_looks_secret(rest)) && !is_plain_path(rest);
                    (secret, at, Open::Brackets { depth: 0, secret })
                }
                // A header, or a line too broken to find a key in.
                None => {
                    let secret = value_looks_secret(line) || key_secrecy(line) != Secrecy::None;
                    (secret, indent, Open::None)
                }
            }
        }
    };
    let next = scan(&line[value_at..], state);
    (secret.then_some(value_at), next)
}

/// Byte offset of the `=` that ends the key of a `key = value` line.
fn key_end(line: &str) -> Option<usize> {
    let mut quote = None;
    for (i, ch) in line.char_indices() {
        match (quote, ch) {
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, '=') => return Some(i),
            (None, '[' | '#') if line[..i].trim().is_empty() => return None,
            _ => {}
        }
    }
    None
}

/// Follow strings, comments and brackets to the end of the line.
fn scan(text: &str, state: Open) -> Open {
    let (mut depth, secret) = match state {
        Open::Brackets { depth, secret } => (depth, secret),
        Open::String { quote, secret } => {
            let close: String = std::iter::repeat_n(quote, 3).collect();
            match text.find(&close) {
                Some(i) => return scan(&text[i + 3..], Open::Brackets { depth: 0, secret }),
                None => return state,
            }
        }
        Open::None => (0, false),
    };
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => break,
            q @ (b'"' | b'\'') => {
                if b[i..].starts_with(&[q, q, q]) {
                    let quote = char::from(q);
                    return scan(&text[i + 3..], Open::String { quote, secret })
                        .continue_brackets(depth);
                }
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if q == b'"' && b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    if depth > 0 {
        Open::Brackets { depth, secret }
    } else {
        Open::None
    }
}

impl Open {
    /// After a multi-line string closed, the brackets around it are still open.
    fn continue_brackets(self, outer: usize) -> Open {
        match self {
            Open::Brackets { depth, secret } if depth + outer > 0 => Open::Brackets {
                depth: depth + outer,
                secret,
            },
            Open::Brackets { .. } | Open::None => Open::None,
            s @ Open::String { .. } => s,
        }
    }
}

/// What a key's name says about its value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Secrecy {
    /// Nothing secret.
    None,
    /// A secret (a password, token, PIN, key, connection string).
    Secret,
    /// Where a secret is or which one: its file, directory, path, socket,
    /// id or size — not a secret itself.
    AboutSecret,
}

fn key_secrecy(key: &str) -> Secrecy {
    const SECRET: &[&str] = &[
        "connection",
        "conninfo",
        "dsn",
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "pin",
        "key",
        "credential",
        "credentials",
        "private",
        "apikey",
        "auth",
    ];
    const ABOUT: &[&str] = &[
        "file", "dir", "path", "socket", "id", "bits", "url", "version",
    ];
    let lower = key.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if !words.iter().any(|w| SECRET.contains(w)) {
        Secrecy::None
    } else if words.last().is_some_and(|w| ABOUT.contains(w)) {
        Secrecy::AboutSecret
    } else {
        Secrecy::Secret
    }
}

/// Whether a value holds something secret whatever its key: a libpq
/// `password`, URL credentials, a PEM block, a `token=`/`secret=` pair.
fn value_looks_secret(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "passphrase",
        "-----begin",
        "private key",
        "secret=",
        "token=",
    ]
    .iter()
    .any(|s| v.contains(s))
        || url_credentials(&v).is_some()
}

/// A quoted absolute path and nothing else (where a secret file is).
fn is_plain_path(value: &str) -> bool {
    let v = value.trim();
    let v = v.split_once('#').map_or(v, |(a, _)| a).trim_end();
    let inner = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')));
    inner.is_some_and(|p| {
        p.starts_with('/')
            && !p
                .chars()
                .any(|c| c.is_whitespace() || "=:@\\\"'".contains(c))
    })
}

/// The byte range of the first password in `scheme://user:password@host`.
fn url_credentials(text: &str) -> Option<Range<usize>> {
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let auth_end = text[start..]
            .find(|c: char| "/?\"'`".contains(c) || c.is_whitespace())
            .map_or(text.len(), |e| start + e);
        let auth = &text[start..auth_end];
        if let Some(at) = auth.rfind('@') {
            if let Some(colon) = auth[..at].find(':') {
                let r = start + colon + 1..start + at;
                if !r.is_empty() && &text[r.clone()] != REDACTED {
                    return Some(r);
                }
            }
        }
        from = start;
    }
    None
}

/// The texts of a secret value that a message might quote: the value (the
/// inside of its quotes, also as `{:?}` prints it) and each of its words.
fn secret_fragments(value: &str) -> Vec<String> {
    let v = value.trim();
    let inner = match v.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let body = v.trim_start_matches(q);
            let mut escaped = false;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    let closes = c == q && !escaped;
                    escaped = q == '"' && c == '\\' && !escaped;
                    closes
                })
                .map_or(body.len(), |(i, _)| i);
            &body[..end]
        }
        _ => v.split('#').next().unwrap_or(v).trim_end(),
    };
    let debug = format!("{inner:?}");
    let mut out: Vec<String> = vec![inner.to_owned(), debug[1..debug.len() - 1].to_owned()];
    out.extend(inner.split_whitespace().map(str::to_owned));
    out.retain(|s| s.chars().count() >= 4);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// `password=…` (libpq style, any case) and URL credentials, whatever text
/// they are in, with their values replaced.
pub fn scrub_patterns(text: &str) -> String {
    let mut out = text.to_owned();
    while let Some(r) = url_credentials(&out) {
        out.replace_range(r, REDACTED);
    }
    let mut from = 0;
    loop {
        let lower = out.to_ascii_lowercase();
        let Some(i) = ["password", "passwd"]
            .iter()
            .filter_map(|k| lower[from..].find(k).map(|i| from + i + k.len()))
            .min()
        else {
            break;
        };
        let rest = &out[i..];
        let blanks = rest.len() - rest.trim_start().len();
        if !rest[blanks..].starts_with('=') {
            from = i;
            continue;
        }
        let v = i + blanks + 1;
        let v = v + (out[v..].len() - out[v..].trim_start().len());
        let end = if out[v..].starts_with('\'') {
            out[v + 1..].find('\'').map_or(out.len(), |e| v + e + 2)
        } else {
            out[v..]
                .find(|c: char| c.is_whitespace() || "\"`".contains(c))
                .map_or(out.len(), |e| v + e)
        };
        if end > v && out[v..end] != *REDACTED {
            out.replace_range(v..end, REDACTED);
            from = v + REDACTED.len();
        } else {
            from = end.max(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str, line: usize) -> Shown {
        Source {
            path: "agent.toml".into(),
            text: text.into(),
        }
        .shown_line(line)
    }

    #[test]
    fn config_secret_lines_are_redacted_and_others_are_not() {
        for (text, line, want) in [
            (
                "connection = \"host=/x password=pw1\"",
                1,
                "connection = <redacted>",
            ),
            (
                "connection = \"host=/x password=pw1",
                1,
                "connection = <redacted>",
            ),
            ("  pin=1234", 1, "  pin=<redacted>"),
            ("api_token = 'abc'", 1, "api_token = <redacted>"),
            (
                "retention_days = \"password=pw1\"",
                1,
                "retention_days = <redacted>",
            ),
            ("endpoint = \"https://u:pw1@h\"", 1, "endpoint = <redacted>"),
            (
                "private_key = \"\"\"\n-----BEGIN X\nabc\n\"\"\"\nretention_days = 3",
                3,
                "<redacted>",
            ),
            (
                "connection = [\n \"a\",\n \"pw1\"]\nretention_days = 3",
                3,
                " <redacted>",
            ),
            ("[backup] connection = \"password=pw1\"", 1, "<redacted>"),
            (
                "api_token_id = \"u@pve!t=pw1\"",
                1,
                "api_token_id = <redacted>",
            ),
            // Where secrets are is not secret.
            (
                "decryption_key = \"/etc/k/backup.sec.asc\"",
                1,
                "decryption_key = \"/etc/k/backup.sec.asc\"",
            ),
            (
                "key_file = \"/etc/tls/agent.key\"",
                1,
                "key_file = \"/etc/tls/agent.key\"",
            ),
            (
                "api_token_id = \"u@pve!t\"",
                1,
                "api_token_id = \"u@pve!t\"",
            ),
            ("key_bits = 512", 1, "key_bits = 512"),
            (
                "private_key = \"\"\"\nabc\n\"\"\"\nretention_days = 3",
                4,
                "retention_days = 3",
            ),
            (
                "connection = [\n \"a\"]\nschedule = \"x\"",
                3,
                "schedule = \"x\"",
            ),
            ("[backup]", 1, "[backup]"),
        ] {
            assert_eq!(
                shown(text, line).snippet.as_deref(),
                Some(want),
                "{text:?} line {line}"
            );
        }
    }

    #[test]
    fn config_problem_at_a_secret_line_cuts_the_value_out_of_message_and_hint() {
        let src = Source {
            path: "agent.toml".into(),
            text: "[backup]\nretention_days = \"password=Hunter2\"\n".into(),
        };
        let mut problems = Vec::new();
        let mut c = Check {
            src: &src,
            problems: &mut problems,
            other_files: false,
            owners: crate::fsx::Owners { agent: 0 },
        };
        c.err(
            26..44,
            "invalid type: string \"password=Hunter2\", expected u32",
            "got password=Hunter2",
        );
        let text = problems[0].to_string();
        assert!(!text.contains("Hunter2"), "{text}");
        assert!(
            text.starts_with("agent.toml:2:18: invalid type: string \"<redacted>\""),
            "{text}"
        );
        assert!(
            text.contains("    | retention_days = <redacted>\n    |                  ^"),
            "{text}"
        );
    }

    #[test]
    fn config_password_patterns_are_scrubbed_from_any_problem() {
        let p = Problem::general(
            "a PASSWORD = 'a b' c, password=x1; passwd=y \"password=z\" https://u:pw@h/x password alone",
        )
        .hint("postgresql://u:pw@h:5432/db");
        assert_eq!(
            p.message,
            "a PASSWORD = <redacted> c, password=<redacted> passwd=<redacted> \"password=<redacted>\" https://u:<redacted>@h/x password alone"
        );
        assert_eq!(
            p.hint.as_deref(),
            Some("postgresql://u:<redacted>@h:5432/db")
        );
    }
}
