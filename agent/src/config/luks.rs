//! `[luks]`: the encryption policy and the volumes it applies to.

use super::common::check_secret_file;
use super::problem::{Check, Problem};
use super::schema::{fragment, Ctx, Rules};
use crate::schedule::Schedule;
use std::path::PathBuf;

fragment! {
    /// `[luks]` as written in one file.
    raw RawLuks;
    /// Validated `[luks]`.
    #[derive(Debug, Clone)]
    pub struct LuksConfig {
        /// When the daemon runs the check.
        schedule: Schedule = ("*/5 * * * *"),
        /// Where header backups go (0700; files 0400).
        header_backup_dir: PathBuf = {|c| c.state_dir.join("luks-headers")},
        /// The privileged LUKS helper's socket, asked when the agent is not root
        /// (docs/adr/0008-privileges.md).
        helper_socket: PathBuf = ("/run/cloudnx-agent-luks-helper.sock"),
        /// Paths under which any mounted filesystem must be on a dm-crypt mapping.
        data_paths: Vec<PathBuf> = (vec![]),
    } + {
        /// What every volume must satisfy.
        policy: LuksPolicy,
        /// The volumes.
        volumes: Vec<LuksVolume>,
    }
    tables { policy: RawPolicy, }
    arrays { volumes: RawVolume as "luks.volumes", }
}

fragment! {
    /// `[luks.policy]` as written.
    raw RawPolicy;
    /// The LUKS policy.
    #[derive(Debug, Clone, PartialEq)]
    pub struct LuksPolicy {
        /// Required LUKS version.
        luks_version: u8 = (2),
        /// Required `cipher-mode`, e.g. `aes-xts-plain64`.
        cipher: String = ("aes-xts-plain64"),
        /// Required volume key size in bits.
        key_bits: u32 = (512),
        /// Required PBKDF for passphrase keyslots.
        pbkdf: String = ("argon2id"),
        /// Most active keyslots allowed.
        max_keyslots: u32 = (2),
    }
}

fragment! {
    /// `[[luks.volumes]]` as written.
    raw RawVolume by name;
    /// One volume.
    #[derive(Debug, Clone, PartialEq)]
    pub struct LuksVolume {
        /// dm mapping name.
        name: String = required,
        /// Block device (or image file in tests).
        device: PathBuf = required,
        /// Where it must be mounted, if anywhere.
        mountpoint: PathBuf = optional,
        /// Key file that lets the agent re-open a closed mapping.
        keyfile: PathBuf = optional,
        /// Whether a closed mapping is a violation (`not_open`); default true.
        /// False for volumes that are closed on purpose (a cold spare, an
        /// offline backup disk): their header is still held to the policy.
        require_open: bool = (true),
    }
}

impl Rules for RawLuks {}

impl Rules for RawPolicy {
    fn rules(&self, c: &mut Check) {
        if let Some(v) = &self.luks_version {
            if !matches!(v.get_ref(), 1 | 2) {
                c.err(
                    v.span(),
                    format!("luks_version {} does not exist", v.get_ref()),
                    "use 2 (or 1)",
                );
            }
        }
        if let Some(k) = &self.pbkdf {
            if !matches!(k.get_ref().as_str(), "argon2id" | "argon2i" | "pbkdf2") {
                c.err(
                    k.span(),
                    format!("unknown pbkdf {:?}", k.get_ref()),
                    "use \"argon2id\", \"argon2i\" or \"pbkdf2\"",
                );
            }
        }
    }
}

impl Rules for RawVolume {
    fn rules(&self, c: &mut Check) {
        if let Some(n) = &self.name {
            // dm names: at most 127 bytes, no '/', and a name that is also
            // usable as a metrics label and a backup file name.
            let ok = !n.get_ref().is_empty()
                && n.get_ref().len() < 128
                && n.get_ref()
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.+".contains(ch));
            if !ok {
                c.err(
                    n.span(),
                    format!(
                        "volume name {:?} is not a usable dm mapping name",
                        n.get_ref()
                    ),
                    "use 1-127 letters, digits, '-', '_', '.', '+' (the name under /dev/mapper/)",
                );
            }
        }
        check_secret_file(c, "keyfile", &self.keyfile, false);
    }
}

/// Build `[luks]` with its policy and volumes.
pub(super) fn build(
    mut raw: RawLuks,
    ctx: &Ctx,
    problems: &mut Vec<Problem>,
) -> Option<LuksConfig> {
    let mut policy = raw.policy.take().unwrap_or_default();
    let policy = LuksPolicy::build(&mut policy, "luks.policy", ctx, problems)?;
    let volumes: Vec<LuksVolume> = std::mem::take(&mut raw.volumes)
        .into_iter()
        .filter_map(|mut v| LuksVolume::build(&mut v, "luks.volumes", ctx, problems))
        .collect();
    LuksConfig::build(&mut raw, "luks", ctx, problems, policy, volumes)
}
