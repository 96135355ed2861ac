//! Checks shared by sections that name files: files that must exist, and
//! secret files (mode and owner).

use super::problem::Check;
use super::schema::Opt;
pub use crate::fsx::{secret_file_problem, Owners};
use std::path::PathBuf;

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

/// A secret file: must exist (unless `may_be_absent`), be unreadable by
/// group and other, and belong to root or the agent's user.
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
    if let Some((msg, hint)) = secret_file_problem(p.get_ref(), may_be_absent, Some(c.owners)) {
        c.err(p.span(), format!("`{key}`: {msg}"), hint);
    }
}
