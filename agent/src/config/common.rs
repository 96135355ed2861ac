//! Checks shared by sections that name files: files that must exist, and
//! secret files (mode and owner).

use super::problem::Check;
use super::schema::Opt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The users a secret file may belong to: root, and the user the agent runs
/// as — the effective user, or for a root run the owner of `state_dir`,
/// since a root CLI run becomes that user (`cli::act_as_state_owner`) and
/// the root LUKS helper serves it. So the daemon (`cloudnx-agent`), a root
/// `check-config` and the helper accept the same files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners {
    /// The agent's user (0 when that is root).
    pub agent: u32,
}

impl Owners {
    /// The owners allowed when the configuration names `state_dir`.
    pub fn for_state_dir(state_dir: &Path) -> Owners {
        let euid = nix::unistd::geteuid().as_raw();
        let agent = if euid == 0 {
            std::fs::metadata(state_dir).map_or(0, |m| m.uid())
        } else {
            euid
        };
        Owners { agent }
    }

    fn allows(self, uid: u32) -> bool {
        uid == 0 || uid == self.agent
    }
}

/// `name (uid N)`, or `uid N` for a uid without a name.
fn user(uid: u32) -> (String, String) {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    match name {
        Some(n) => (format!("{n} (uid {uid})"), n),
        None => (format!("uid {uid}"), uid.to_string()),
    }
}

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

/// Why a secret file is unacceptable, if it is: (message, hint). Never reads
/// the content. `owners`: who may own it (None: not checked).
pub fn secret_file_problem(
    path: &Path,
    may_be_absent: bool,
    owners: Option<Owners>,
) -> Option<(String, String)> {
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
        Ok(m) => match owners {
            Some(o) if !o.allows(m.uid()) => {
                let (owner, _) = user(m.uid());
                let (agent, agent_name) = user(o.agent);
                let (who, fix) = if o.agent == 0 {
                    ("root, the user the agent runs as".to_owned(), format!("chown root {p}"))
                } else {
                    (
                        format!("root or {agent}, the user the agent runs as"),
                        format!("chown {agent_name} {p} (or chown root {p})"),
                    )
                };
                Some((
                    format!("secret file {p} belongs to {owner}, not to {who}: that user could read or replace it"),
                    fix,
                ))
            }
            _ => None,
        },
    }
}
