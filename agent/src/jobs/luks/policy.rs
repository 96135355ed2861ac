//! Pure evaluation of what was inspected and observed against the policy:
//! a list of named failed checks per volume. No I/O.
//!
//! Definitions (also in docs/adr/0007-luks.md):
//! - `pbkdf`: every in-use keyslot must use the policy's PBKDF, except a slot
//!   bound to a token of an unattended-unlock type ([`TOKEN_BOUND_TYPES`]) that
//!   uses PBKDF2: those hold a random high-entropy secret and clevis/systemd
//!   write PBKDF2 on purpose.
//! - `keyslots`: more in-use (active or unbound) keyslots than `max_keyslots`.
//! - `unbound_keyslot`: a LUKS2 keyslot not bound to the volume key
//!   (`luksAddKey --unbound`): it opens nothing but stores a secret in the header.
//! - `orphan_token`: a token that references no in-use keyslot (left behind
//!   when a slot was killed without unbinding its clevis/systemd token).
//! - `missing_device` / `unreadable` / `not_luks` stand alone: without a LUKS header there is
//!   no volume identity to hold a mapping or mount to.

use super::inspect::{HeaderState, Inspection, SlotState};
use super::live::{Mapping, MountState, VolumeLive};
use crate::config::{LuksPolicy, LuksVolume};
use serde::Serialize;

/// Token types whose keyslots may use PBKDF2 by design.
pub const TOKEN_BOUND_TYPES: &[&str] =
    &["clevis", "systemd-tpm2", "systemd-fido2", "systemd-pkcs11"];

/// A named policy check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The configured device does not exist.
    MissingDevice,
    /// The device could not be read.
    Unreadable,
    /// The device has no LUKS header.
    NotLuks,
    /// Wrong LUKS version.
    LuksVersion,
    /// Wrong cipher or mode.
    Cipher,
    /// Wrong volume key size.
    KeyBits,
    /// A passphrase keyslot with the wrong PBKDF.
    Pbkdf,
    /// Too many in-use keyslots.
    Keyslots,
    /// A keyslot not bound to the volume key.
    UnboundKeyslot,
    /// A token bound to no in-use keyslot.
    OrphanToken,
    /// The volume's own mapping is not open.
    NotOpen,
    /// Nothing is mounted at the configured mountpoint.
    NotMounted,
    /// The mountpoint holds a filesystem not on the volume's mapping.
    MountNotOnMapping,
}

impl Check {
    /// The name in metrics (`check` label), JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::MissingDevice => "missing_device",
            Check::Unreadable => "unreadable",
            Check::NotLuks => "not_luks",
            Check::LuksVersion => "luks_version",
            Check::Cipher => "cipher",
            Check::KeyBits => "key_bits",
            Check::Pbkdf => "pbkdf",
            Check::Keyslots => "keyslots",
            Check::UnboundKeyslot => "unbound_keyslot",
            Check::OrphanToken => "orphan_token",
            Check::NotOpen => "not_open",
            Check::NotMounted => "not_mounted",
            Check::MountNotOnMapping => "mount_not_on_mapping",
        }
    }
}

/// One failed check and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Which check.
    pub check: Check,
    /// What was found against what the policy wants.
    pub detail: String,
}

fn fail(out: &mut Vec<Failure>, check: Check, detail: String) {
    out.push(Failure { check, detail });
}

/// Checks on the header alone.
pub fn evaluate_header(policy: &LuksPolicy, h: &Inspection) -> Vec<Failure> {
    let mut out = Vec::new();
    if h.luks_version != policy.luks_version {
        fail(
            &mut out,
            Check::LuksVersion,
            format!(
                "LUKS{}, policy requires LUKS{}",
                h.luks_version, policy.luks_version
            ),
        );
    }
    let cipher = format!("{}-{}", h.cipher, h.cipher_mode);
    if cipher != policy.cipher {
        fail(
            &mut out,
            Check::Cipher,
            format!("{cipher}, policy requires {}", policy.cipher),
        );
    }
    if h.key_bits != policy.key_bits {
        fail(
            &mut out,
            Check::KeyBits,
            format!(
                "{}-bit volume key, policy requires {}",
                h.key_bits, policy.key_bits
            ),
        );
    }
    let in_use = |s: u32| h.keyslots.iter().any(|k| k.slot == s);
    let token_bound = |s: u32| {
        h.tokens
            .iter()
            .any(|t| TOKEN_BOUND_TYPES.contains(&t.kind.as_str()) && t.keyslots.contains(&s))
    };
    let bad_kdf: Vec<String> = h
        .keyslots
        .iter()
        .filter_map(|k| {
            let kind = k.pbkdf.as_ref().map_or("unknown", |p| p.kind.as_str());
            let exempt = kind == "pbkdf2" && token_bound(k.slot);
            (kind != policy.pbkdf && !exempt).then(|| format!("keyslot {} uses {kind}", k.slot))
        })
        .collect();
    if !bad_kdf.is_empty() {
        fail(
            &mut out,
            Check::Pbkdf,
            format!(
                "{}; policy requires {} for passphrase keyslots",
                bad_kdf.join(", "),
                policy.pbkdf
            ),
        );
    }
    let n = h.keyslots.len();
    if n > policy.max_keyslots as usize {
        let slots: Vec<String> = h.keyslots.iter().map(|k| k.slot.to_string()).collect();
        fail(
            &mut out,
            Check::Keyslots,
            format!(
                "{n} keyslots in use ({}), policy allows {}",
                slots.join(", "),
                policy.max_keyslots
            ),
        );
    }
    let unbound: Vec<String> = h
        .keyslots
        .iter()
        .filter(|k| k.state == SlotState::Unbound)
        .map(|k| k.slot.to_string())
        .collect();
    if !unbound.is_empty() {
        fail(
            &mut out,
            Check::UnboundKeyslot,
            format!(
                "keyslot {} is not bound to the volume key",
                unbound.join(", ")
            ),
        );
    }
    let orphans: Vec<String> = h
        .tokens
        .iter()
        .filter(|t| !t.keyslots.iter().any(|s| in_use(*s)))
        .map(|t| format!("token {} ({})", t.id, t.kind))
        .collect();
    if !orphans.is_empty() {
        fail(
            &mut out,
            Check::OrphanToken,
            format!("{} unlocks no keyslot in use", orphans.join(", ")),
        );
    }
    out
}

/// Every check of one volume, in a stable order.
pub fn evaluate(
    policy: &LuksPolicy,
    vol: &LuksVolume,
    header: &HeaderState,
    live: Option<&VolumeLive>,
) -> Vec<Failure> {
    let h = match header {
        HeaderState::Missing(why) => {
            return vec![Failure {
                check: Check::MissingDevice,
                detail: why.clone(),
            }]
        }
        HeaderState::NotLuks(why) => {
            return vec![Failure {
                check: Check::NotLuks,
                detail: why.clone(),
            }]
        }
        HeaderState::Unreadable(why) => {
            return vec![Failure {
                check: Check::Unreadable,
                detail: why.clone(),
            }]
        }
        HeaderState::Luks(h) => h,
    };
    let mut out = evaluate_header(policy, h);
    if let Some(live) = live {
        match &live.mapping {
            Mapping::Open { .. } => {}
            _ if !vol.require_open => {}
            Mapping::Closed => fail(&mut out, Check::NotOpen, format!("no dm mapping {} is open", vol.name)),
            Mapping::OtherDevice { devno, expected } => fail(
                &mut out,
                Check::NotOpen,
                format!("dm-crypt mapping {} ({devno}) has this volume's uuid but sits on another disk than {} ({expected}): a cloned header?", vol.name, vol.device.display()),
            ),
            Mapping::Foreign { dm_uuid } => fail(
                &mut out,
                Check::NotOpen,
                format!("dm device {} exists but is not this volume's dm-crypt mapping (dm uuid {dm_uuid:?})", vol.name),
            ),
        }
        let mp = vol
            .mountpoint
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string());
        match &live.mount {
            None | Some(MountState::OnMapping { .. }) => {}
            Some(MountState::NotMounted) => fail(
                &mut out,
                Check::NotMounted,
                format!("nothing is mounted at {mp}"),
            ),
            Some(MountState::Elsewhere { source, fstype }) => fail(
                &mut out,
                Check::MountNotOnMapping,
                format!(
                    "{mp} holds {fstype} from {source:?}, which is not on the dm-crypt mapping {}",
                    vol.name
                ),
            ),
        }
    }
    out.sort_by_key(|f| f.check);
    out
}

#[cfg(test)]
mod tests {
    use super::super::inspect::{Keyslot, Pbkdf, Token};
    use super::*;
    use Check::*;

    fn policy() -> LuksPolicy {
        LuksPolicy {
            luks_version: 2,
            cipher: "aes-xts-plain64".into(),
            key_bits: 512,
            pbkdf: "argon2id".into(),
            max_keyslots: 2,
        }
    }

    fn vol(require_open: bool, mountpoint: Option<&str>) -> LuksVolume {
        LuksVolume {
            name: "vmdata".into(),
            device: "/dev/x".into(),
            mountpoint: mountpoint.map(Into::into),
            keyfile: None,
            require_open,
        }
    }

    fn slot(slot: u32, kdf: &str) -> Keyslot {
        Keyslot {
            slot,
            state: SlotState::Active,
            pbkdf: Some(Pbkdf {
                kind: kdf.into(),
                hash: None,
                iterations: 4,
                memory_kb: 32768,
                threads: 1,
            }),
        }
    }

    fn good() -> Inspection {
        Inspection {
            luks_version: 2,
            uuid: "0b5d2c1e-6a3f-4c1b-9d7e-2f8a9b0c1d2e".into(),
            label: String::new(),
            cipher: "aes".into(),
            cipher_mode: "xts-plain64".into(),
            key_bits: 512,
            seqid: Some(3),
            header_id: "3".into(),
            keyslots: vec![slot(0, "argon2id")],
            tokens: vec![],
        }
    }

    fn token(id: u32, kind: &str, slots: &[u32]) -> Token {
        Token {
            id,
            kind: kind.into(),
            keyslots: slots.to_vec(),
        }
    }

    /// (case name, how it differs from a compliant header, expected failed checks).
    type HeaderCase = (&'static str, Box<dyn Fn(&mut Inspection)>, Vec<Check>);

    #[test]
    fn header_checks_table() {
        let cases: Vec<HeaderCase> = vec![
            ("compliant", Box::new(|_| {}), vec![]),
            (
                "luks1 with pbkdf2",
                Box::new(|h| {
                    h.luks_version = 1;
                    h.keyslots = vec![slot(0, "pbkdf2")];
                }),
                vec![LuksVersion, Pbkdf],
            ),
            (
                "pbkdf2 passphrase slot",
                Box::new(|h| h.keyslots.push(slot(1, "pbkdf2"))),
                vec![Pbkdf],
            ),
            (
                "argon2i is not argon2id",
                Box::new(|h| h.keyslots[0] = slot(0, "argon2i")),
                vec![Pbkdf],
            ),
            (
                "clevis pbkdf2 slot exempt",
                Box::new(|h| {
                    h.keyslots.push(slot(1, "pbkdf2"));
                    h.tokens.push(token(0, "clevis", &[1]));
                }),
                vec![],
            ),
            (
                "systemd-tpm2 pbkdf2 slot exempt",
                Box::new(|h| {
                    h.keyslots.push(slot(1, "pbkdf2"));
                    h.tokens.push(token(0, "systemd-tpm2", &[1]));
                }),
                vec![],
            ),
            (
                "keyring token does not exempt",
                Box::new(|h| {
                    h.keyslots.push(slot(1, "pbkdf2"));
                    h.tokens.push(token(0, "luks2-keyring", &[1]));
                }),
                vec![Pbkdf],
            ),
            (
                "clevis bound to another slot does not exempt",
                Box::new(|h| {
                    h.keyslots.push(slot(1, "pbkdf2"));
                    h.keyslots.push(slot(2, "argon2id"));
                    h.tokens.push(token(0, "clevis", &[2]));
                }),
                vec![Pbkdf, Keyslots],
            ),
            (
                "aes-cbc",
                Box::new(|h| {
                    h.cipher_mode = "cbc-essiv:sha256".into();
                    h.key_bits = 256;
                }),
                vec![Cipher, KeyBits],
            ),
            (
                "serpent",
                Box::new(|h| h.cipher = "serpent".into()),
                vec![Cipher],
            ),
            ("256-bit key", Box::new(|h| h.key_bits = 256), vec![KeyBits]),
            (
                "three slots",
                Box::new(|h| {
                    h.keyslots.push(slot(1, "argon2id"));
                    h.keyslots.push(slot(2, "argon2id"));
                }),
                vec![Keyslots],
            ),
            (
                "unbound slot",
                Box::new(|h| {
                    h.keyslots.push(Keyslot {
                        state: SlotState::Unbound,
                        ..slot(5, "argon2id")
                    })
                }),
                vec![UnboundKeyslot],
            ),
            (
                "orphan token",
                Box::new(|h| h.tokens.push(token(0, "clevis", &[]))),
                vec![OrphanToken],
            ),
            (
                "token on a killed slot",
                Box::new(|h| h.tokens.push(token(1, "systemd-tpm2", &[4]))),
                vec![OrphanToken],
            ),
            (
                "unknown pbkdf",
                Box::new(|h| h.keyslots[0].pbkdf = None),
                vec![Pbkdf],
            ),
        ];
        for (name, edit, want) in cases {
            let mut h = good();
            edit(&mut h);
            let got: Vec<Check> = evaluate(
                &policy(),
                &vol(false, None),
                &HeaderState::Luks(Box::new(h)),
                None,
            )
            .into_iter()
            .map(|f| f.check)
            .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn live_checks_table() {
        let open = Mapping::Open {
            devno: "254:0".into(),
        };
        let foreign = Mapping::Foreign {
            dm_uuid: "LVM-x".into(),
        };
        let on = MountState::OnMapping {
            source: "/dev/mapper/vmdata".into(),
        };
        let off = MountState::Elsewhere {
            source: "/dev/sdb1".into(),
            fstype: "ext4".into(),
        };
        let cases = [
            (
                "open and mounted",
                true,
                Some("/v"),
                open.clone(),
                Some(on.clone()),
                vec![],
            ),
            (
                "closed, required",
                true,
                None,
                Mapping::Closed,
                None,
                vec![NotOpen],
            ),
            (
                "closed, not required",
                false,
                None,
                Mapping::Closed,
                None,
                vec![],
            ),
            (
                "foreign name holder",
                true,
                None,
                foreign,
                None,
                vec![NotOpen],
            ),
            (
                "cloned header's mapping on another disk",
                true,
                None,
                Mapping::OtherDevice {
                    devno: "254:3".into(),
                    expected: "8:2".into(),
                },
                None,
                vec![NotOpen],
            ),
            (
                "closed and not mounted",
                true,
                Some("/v"),
                Mapping::Closed,
                Some(MountState::NotMounted),
                vec![NotOpen, NotMounted],
            ),
            (
                "open but mount elsewhere",
                true,
                Some("/v"),
                open,
                Some(off.clone()),
                vec![MountNotOnMapping],
            ),
            (
                "closed and look-alike mount",
                true,
                Some("/v"),
                Mapping::Closed,
                Some(off),
                vec![NotOpen, MountNotOnMapping],
            ),
        ];
        for (name, req, mp, mapping, mount, want) in cases {
            let live = VolumeLive { mapping, mount };
            let got: Vec<Check> = evaluate(
                &policy(),
                &vol(req, mp),
                &HeaderState::Luks(Box::new(good())),
                Some(&live),
            )
            .into_iter()
            .map(|f| f.check)
            .collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn missing_and_not_luks_stand_alone() {
        let live = VolumeLive {
            mapping: Mapping::Closed,
            mount: Some(MountState::NotMounted),
        };
        for (h, want) in [
            (HeaderState::Missing("gone".into()), MissingDevice),
            (HeaderState::NotLuks("ext4".into()), NotLuks),
        ] {
            let got: Vec<Check> = evaluate(&policy(), &vol(true, Some("/v")), &h, Some(&live))
                .into_iter()
                .map(|f| f.check)
                .collect();
            assert_eq!(got, vec![want]);
        }
    }

    #[test]
    fn check_names_are_the_contract_names() {
        let all = [
            MissingDevice,
            Unreadable,
            NotLuks,
            LuksVersion,
            Cipher,
            KeyBits,
            Pbkdf,
            Keyslots,
            UnboundKeyslot,
            OrphanToken,
            NotOpen,
            NotMounted,
            MountNotOnMapping,
        ];
        let names: Vec<&str> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "missing_device",
                "unreadable",
                "not_luks",
                "luks_version",
                "cipher",
                "key_bits",
                "pbkdf",
                "keyslots",
                "unbound_keyslot",
                "orphan_token",
                "not_open",
                "not_mounted",
                "mount_not_on_mapping"
            ]
        );
        for c in all {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
