//! The one repair the agent makes on its own: open a configured, closed
//! volume that has a `keyfile`, through libcryptsetup (audited `luks.open`).
//! It never formats, never adds or removes a keyslot, never mounts.

use super::inspect::{self, HeaderState};
use super::live::Mapping;
use crate::config::LuksVolume;
use std::path::Path;

/// Why no open is attempted, or None when it should be.
pub fn skip_reason(
    vol: &LuksVolume,
    header: &HeaderState,
    mapping: Option<&Mapping>,
) -> Option<String> {
    if vol.keyfile.is_none() {
        return Some("no keyfile configured".into());
    }
    if !vol.require_open {
        return Some("require_open = false: the volume may be closed on purpose".into());
    }
    if !matches!(header, HeaderState::Luks(_)) {
        return Some("no LUKS header".into());
    }
    match mapping {
        Some(Mapping::Closed) => None,
        Some(Mapping::Open { .. }) => Some("already open".into()),
        Some(Mapping::OtherDevice { devno, .. }) => Some(format!(
            "the name {} is held by a mapping ({devno}) of a copy of this header on another disk",
            vol.name
        )),
        Some(Mapping::Foreign { dm_uuid }) => Some(format!(
            "the name {} is held by another dm device (uuid {dm_uuid:?}); close or rename it first",
            vol.name
        )),
        None => Some("live state unknown".into()),
    }
}

/// Why device-mapper cannot be used on this machine, if it cannot.
/// `/dev/mapper/control` proves nothing: libcryptsetup creates that node
/// itself; the kernel lists `device-mapper` in /proc/misc once dm is loaded,
/// and a modular or built-in dm_mod shows in `{sysfs}/module`.
pub fn dm_unavailable(sysfs: &Path) -> Option<String> {
    let module = sysfs.join("module/dm_mod");
    let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    if module.exists()
        || misc
            .lines()
            .any(|l| l.trim_end().ends_with(" device-mapper"))
    {
        return None;
    }
    Some(format!(
        "no {} and no device-mapper in /proc/misc: this kernel has no device-mapper; load it with `modprobe dm_mod dm_crypt` or boot a kernel that has it",
        module.display()
    ))
}

/// What a repair attempt came to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "detail", rename_all = "snake_case")]
pub enum Attempt {
    /// Nothing to do, or nothing safe to do (why).
    Skipped(String),
    /// It should be opened but cannot be here; no key was used (error naming the volume).
    Impossible(String),
    /// libcryptsetup opened the mapping.
    Opened,
    /// libcryptsetup tried and failed (error naming the volume).
    Failed(String),
}

/// Open `vol` with its keyfile here and now, after checking device-mapper
/// exists (no key is used when it does not).
pub async fn open_now(vol: &LuksVolume, sysfs: &Path) -> Attempt {
    let Some(keyfile) = vol.keyfile.clone() else {
        return Attempt::Skipped("no keyfile configured".into());
    };
    if let Some(why) = dm_unavailable(sysfs) {
        return Attempt::Impossible(format!(
            "re-opening volume {:?}: device-mapper not available ({why})",
            vol.name
        ));
    }
    match inspect::open(vol.device.clone(), vol.name.clone(), keyfile).await {
        Ok(()) => Attempt::Opened,
        Err(e) => Attempt::Failed(format!("re-opening volume {:?}: {e:#}", vol.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_keyed_luks_volume_that_should_be_open_is_opened() {
        let h = HeaderState::Luks(Box::default());
        let vol = |keyfile: bool, require_open: bool| LuksVolume {
            name: "vmdata".into(),
            device: "/dev/x".into(),
            mountpoint: None,
            keyfile: keyfile.then(|| "/k".into()),
            require_open,
        };
        let closed = Mapping::Closed;
        let open = Mapping::Open {
            devno: "254:0".into(),
        };
        let foreign = Mapping::Foreign {
            dm_uuid: "LVM-x".into(),
        };
        let cases = [
            (vol(true, true), &h, Some(&closed), true),
            (vol(false, true), &h, Some(&closed), false),
            (vol(true, false), &h, Some(&closed), false),
            (vol(true, true), &h, Some(&open), false),
            (vol(true, true), &h, Some(&foreign), false),
            (vol(true, true), &h, None, false),
            (
                vol(true, true),
                &HeaderState::NotLuks("ext4".into()),
                Some(&closed),
                false,
            ),
        ];
        for (i, (v, h, m, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                skip_reason(&v, h, m).is_none(),
                want,
                "case {i}: {:?}",
                skip_reason(&v, h, m)
            );
        }
    }
}
