//! Shared building blocks for configuration sections: spanned optional fields,
//! merging, and the per-value checks (cron, paths, secret files).

use super::problem::{Check, Problem};
use crate::schedule::Schedule;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// An optional value that remembers where in its file it was written.
pub type Opt<T> = Option<Spanned<T>>;

/// Later fragments override earlier ones, field by field.
macro_rules! merge_fields {
    ($into:expr, $from:expr; $($f:ident),* $(,)?) => {
        { $( if $from.$f.is_some() { $into.$f = $from.$f; } )* }
    };
}
pub(crate) use merge_fields;

/// The value, or a default when the key was not written anywhere.
pub fn or<T>(v: Opt<T>, default: T) -> T {
    v.map_or(default, Spanned::into_inner)
}

/// A key every configuration that enables the section must set.
pub fn required<T>(v: Opt<T>, section: &str, key: &str, problems: &mut Vec<Problem>) -> Option<T> {
    if v.is_none() {
        problems.push(
            Problem::general(format!("[{section}] is missing the required key `{key}`"))
                .hint(format!("add `{key} = …` to [{section}] (see /usr/share/doc/cloudnx-agent/agent.toml for every key and its default)")),
        );
    }
    v.map(Spanned::into_inner)
}

/// A 5-field cron expression.
pub fn check_cron(c: &mut Check, v: &Opt<String>) {
    if let Some(s) = v {
        if let Err(e) = Schedule::parse(s.get_ref()) {
            c.err(s.span(), format!("invalid schedule {:?}: {e}", s.get_ref()), "use 5 fields: minute hour day-of-month month day-of-week, e.g. \"30 2 * * *\" (read in `timezone`)");
        }
    }
}

/// A path that must be absolute (the daemon's working directory is `/`).
pub fn check_abs(c: &mut Check, key: &str, v: &Opt<PathBuf>) {
    if let Some(p) = v {
        if !p.get_ref().is_absolute() {
            c.err(
                p.span(),
                format!("`{key}` must be an absolute path, got {:?}", p.get_ref()),
                "write the full path starting with /",
            );
        }
    }
}

/// A file that must exist and be readable (certificates, public keys).
pub fn check_file_exists(c: &mut Check, key: &str, v: &Opt<PathBuf>) {
    if let Some(p) = v {
        check_abs(c, key, v);
        if !c.other_files {
            return;
        }
        if let Err(e) = std::fs::metadata(p.get_ref()) {
            c.err(
                p.span(),
                format!("`{key}`: cannot read {}: {e}", p.get_ref().display()),
                "create the file or correct the path",
            );
        }
    }
}

/// A secret file: must exist (unless `may_be_absent`) and be unreadable by group and other.
pub fn check_secret(c: &mut Check, key: &str, v: &Opt<PathBuf>, may_be_absent: bool) {
    if c.other_files {
        check_secret_file(c, key, v, may_be_absent);
    } else {
        check_abs(c, key, v);
    }
}

/// [`check_secret`] whatever `Check::other_files` says (for `[luks]`, the
/// files the LUKS helper itself uses).
pub fn check_secret_file(c: &mut Check, key: &str, v: &Opt<PathBuf>, may_be_absent: bool) {
    let Some(p) = v else { return };
    check_abs(c, key, v);
    match secret_file_problem(p.get_ref(), may_be_absent) {
        None => {}
        Some((msg, hint)) => c.err(p.span(), format!("`{key}`: {msg}"), hint),
    }
}

/// Why a secret file is unacceptable, if it is: (message, hint). Never reads the content.
pub fn secret_file_problem(path: &Path, may_be_absent: bool) -> Option<(String, String)> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_absent => None,
        Err(e) => Some((
            format!("secret file {} cannot be read: {e}", path.display()),
            format!("create it readable by the agent only: install -m 0600 /dev/null {} and write the secret into it", path.display()),
        )),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Some((
            format!("secret file {} is accessible by group or other (mode {:04o})", path.display(), m.permissions().mode() & 0o7777),
            format!("chmod 0600 {}", path.display()),
        )),
        Ok(m) if !m.is_file() => Some((format!("secret {} is not a regular file", path.display()), "point the key at a file".into())),
        Ok(_) => None,
    }
}
