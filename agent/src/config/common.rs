//! Checks shared by sections that name files: files that must exist, and
//! secret files.

use super::problem::Check;
use super::schema::Opt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A file that must exist and be readable (certificates, public keys).
pub fn check_file_exists(c: &mut Check, key: &str, v: &Opt<PathBuf>) {
    let Some(p) = v else { return };
    if !c.other_files || !p.get_ref().is_absolute() {
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

/// A secret file: must exist (unless `may_be_absent`) and be unreadable by
/// group and other.
pub fn check_secret(c: &mut Check, key: &str, v: &Opt<PathBuf>, may_be_absent: bool) {
    if c.other_files {
        check_secret_file(c, key, v, may_be_absent);
    }
}

/// [`check_secret`] whatever `Check::other_files` says (for `[luks]`, the
/// files the LUKS helper itself uses).
pub fn check_secret_file(c: &mut Check, key: &str, v: &Opt<PathBuf>, may_be_absent: bool) {
    let Some(p) = v else { return };
    if !p.get_ref().is_absolute() {
        return;
    }
    if let Some((msg, hint)) = secret_file_problem(p.get_ref(), may_be_absent) {
        c.err(p.span(), format!("`{key}`: {msg}"), hint);
    }
}

/// Why a secret file is unacceptable, if it is: (message, hint). Never reads the content.
pub fn secret_file_problem(path: &Path, may_be_absent: bool) -> Option<(String, String)> {
    let p = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_absent => None,
        Err(e) => Some((
            format!("secret file {p} cannot be read: {e}"),
            format!("create it readable by the agent only: install -m 0600 /dev/null {p} and write the secret into it"),
        )),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Some((
            format!("secret file {p} is accessible by group or other (mode {:04o})", m.permissions().mode() & 0o7777),
            format!("chmod 0600 {p}"),
        )),
        Ok(m) if !m.is_file() => Some((format!("secret {p} is not a regular file"), "point the key at a file".into())),
        Ok(_) => None,
    }
}
