//! `[luks]`: the encryption policy and the volumes it applies to.

use super::common::*;
use super::problem::{Check, Problem};
use crate::schedule::Schedule;
use serde::Deserialize;
use std::path::PathBuf;

/// `[luks]` as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLuks {
    schedule: Opt<String>,
    header_backup_dir: Opt<PathBuf>,
    helper_socket: Opt<PathBuf>,
    data_paths: Opt<Vec<PathBuf>>,
    policy: Option<RawPolicy>,
    #[serde(default)]
    volumes: Vec<RawVolume>,
}

/// `[luks.policy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    luks_version: Opt<u8>,
    cipher: Opt<String>,
    key_bits: Opt<u32>,
    pbkdf: Opt<String>,
    max_keyslots: Opt<u32>,
}

/// `[[luks.volumes]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVolume {
    name: Opt<String>,
    device: Opt<PathBuf>,
    mountpoint: Opt<PathBuf>,
    keyfile: Opt<PathBuf>,
    require_open: Opt<bool>,
}

/// Validated `[luks]`.
#[derive(Debug, Clone)]
pub struct LuksConfig {
    /// When the daemon runs the check.
    pub schedule: Schedule,
    /// Where header backups go (0700; files 0400).
    pub header_backup_dir: PathBuf,
    /// The privileged LUKS helper's socket, asked when the agent is not root
    /// (docs/adr/0008-privileges.md).
    pub helper_socket: PathBuf,
    /// Paths under which any mounted filesystem must be on a dm-crypt mapping.
    pub data_paths: Vec<PathBuf>,
    /// What every volume must satisfy.
    pub policy: LuksPolicy,
    /// The volumes.
    pub volumes: Vec<LuksVolume>,
}

/// The LUKS policy.
#[derive(Debug, Clone, PartialEq)]
pub struct LuksPolicy {
    /// Required LUKS version.
    pub luks_version: u8,
    /// Required `cipher-mode`, e.g. `aes-xts-plain64`.
    pub cipher: String,
    /// Required volume key size in bits.
    pub key_bits: u32,
    /// Required PBKDF for passphrase keyslots.
    pub pbkdf: String,
    /// Most active keyslots allowed.
    pub max_keyslots: u32,
}

/// One volume.
#[derive(Debug, Clone, PartialEq)]
pub struct LuksVolume {
    /// dm mapping name.
    pub name: String,
    /// Block device (or image file in tests).
    pub device: PathBuf,
    /// Where it must be mounted, if anywhere.
    pub mountpoint: Option<PathBuf>,
    /// Key file that lets the agent re-open a closed mapping.
    pub keyfile: Option<PathBuf>,
    /// Whether a closed mapping is a violation (`not_open`); default true.
    /// False for volumes that are closed on purpose (a cold spare, an
    /// offline backup disk): their header is still held to the policy.
    pub require_open: bool,
}

impl RawLuks {
    /// Per-value checks against this file.
    pub fn check(&self, c: &mut Check) {
        check_cron(c, &self.schedule);
        check_abs(c, "header_backup_dir", &self.header_backup_dir);
        check_abs(c, "helper_socket", &self.helper_socket);
        for v in &self.volumes {
            if let Some(n) = &v.name {
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
                        format!("volume name {:?} is not a usable dm mapping name", n.get_ref()),
                        "use 1-127 letters, digits, '-', '_', '.', '+' (the name under /dev/mapper/)",
                    );
                }
            }
            check_secret_file(c, "keyfile", &v.keyfile, false);
            check_abs(c, "device", &v.device);
            check_abs(c, "mountpoint", &v.mountpoint);
        }
        if let Some(p) = &self.policy {
            if let Some(v) = &p.luks_version {
                if !matches!(v.get_ref(), 1 | 2) {
                    c.err(
                        v.span(),
                        format!("luks_version {} does not exist", v.get_ref()),
                        "use 2 (or 1)",
                    );
                }
            }
            if let Some(k) = &p.pbkdf {
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

    /// Merge a later fragment over this one (volumes merge by name).
    pub fn merge(&mut self, o: RawLuks) {
        merge_fields!(self, o; schedule, header_backup_dir, helper_socket, data_paths);
        match (&mut self.policy, o.policy) {
            (Some(p), Some(q)) => {
                merge_fields!(p, q; luks_version, cipher, key_bits, pbkdf, max_keyslots)
            }
            (p @ None, q) => *p = q,
            (_, None) => {}
        }
        for v in o.volumes {
            let name = v.name.as_ref().map(|n| n.get_ref().clone());
            match self
                .volumes
                .iter_mut()
                .find(|x| x.name.as_ref().map(|n| n.get_ref()) == name.as_ref())
            {
                Some(x) if name.is_some() => {
                    merge_fields!(x, v; name, device, mountpoint, keyfile, require_open)
                }
                _ => self.volumes.push(v),
            }
        }
    }

    /// Build the validated section.
    pub fn build(
        self,
        state_dir: &std::path::Path,
        problems: &mut Vec<Problem>,
    ) -> Option<LuksConfig> {
        let schedule = Schedule::parse(&or(self.schedule, "*/5 * * * *".into())).ok()?;
        let p = self.policy.unwrap_or_default();
        let policy = LuksPolicy {
            luks_version: or(p.luks_version, 2),
            cipher: or(p.cipher, "aes-xts-plain64".into()),
            key_bits: or(p.key_bits, 512),
            pbkdf: or(p.pbkdf, "argon2id".into()),
            max_keyslots: or(p.max_keyslots, 2),
        };
        let mut volumes: Vec<LuksVolume> = Vec::new();
        for v in self.volumes {
            let name = required(v.name, "luks.volumes", "name", problems);
            let device = required(v.device, "luks.volumes", "device", problems);
            if let (Some(name), Some(device)) = (name, device) {
                volumes.push(LuksVolume {
                    name,
                    device,
                    mountpoint: v.mountpoint.map(toml::Spanned::into_inner),
                    keyfile: v.keyfile.map(toml::Spanned::into_inner),
                    require_open: or(v.require_open, true),
                });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in &volumes {
            if !seen.insert(v.name.as_str()) {
                problems.push(
                    Problem::general(format!("[[luks.volumes]] name {:?} is used twice", v.name))
                        .hint("each volume is one dm mapping: give every volume its own name"),
                );
            }
        }
        Some(LuksConfig {
            schedule,
            header_backup_dir: or(self.header_backup_dir, state_dir.join("luks-headers")),
            helper_socket: or(
                self.helper_socket,
                PathBuf::from("/run/cloudnx-agent-luks-helper.sock"),
            ),
            data_paths: or(self.data_paths, vec![]),
            policy,
            volumes,
        })
    }
}
