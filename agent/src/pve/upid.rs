//! Proxmox task ids (UPIDs): `UPID:{node}:{pid}:{pstart}:{starttime}:{type}:{id}:{user}:`
//! with pid, pstart and starttime in hex. The node inside the UPID is where the
//! task runs, and therefore where its status must be asked for.

use std::fmt;

/// A parsed task id. Keeps the original text: that is what the API wants back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upid {
    /// The UPID exactly as the API returned it.
    pub raw: String,
    /// Node running the task.
    pub node: String,
    /// Worker process id.
    pub pid: u32,
    /// Process start (clock ticks since boot).
    pub pstart: u64,
    /// Task start, Unix seconds.
    pub starttime: i64,
    /// Task type, e.g. `qmsnapshot`, `vzdelsnapshot`.
    pub task_type: String,
    /// Task object id (the VMID for guest tasks; may be empty).
    pub id: String,
    /// Who started it (`user@realm` or `user@realm!token`).
    pub user: String,
}

/// Why a string is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Proxmox task id (UPID): {text:?}: {why}")]
pub struct UpidError {
    text: String,
    why: &'static str,
}

impl Upid {
    /// Parse a UPID string.
    pub fn parse(text: &str) -> Result<Upid, UpidError> {
        let err = |why| UpidError {
            text: text.chars().take(120).collect(),
            why,
        };
        let rest = text
            .strip_prefix("UPID:")
            .ok_or_else(|| err("missing UPID: prefix"))?;
        let rest = rest
            .strip_suffix(':')
            .ok_or_else(|| err("missing trailing ':'"))?;
        // The user (last field) may itself contain no ':'; the id may be empty.
        let f: Vec<&str> = rest.split(':').collect();
        if f.len() != 7 {
            return Err(err("expected 7 ':'-separated fields"));
        }
        let hex = |s: &str, why| u64::from_str_radix(s, 16).map_err(|_| err(why));
        if f[0].is_empty() {
            return Err(err("empty node"));
        }
        let pid = u32::try_from(hex(f[1], "pid is not hex")?).map_err(|_| err("pid too large"))?;
        let pstart = hex(f[2], "pstart is not hex")?;
        let starttime = i64::try_from(hex(f[3], "starttime is not hex")?)
            .map_err(|_| err("starttime too large"))?;
        if f[4].is_empty() {
            return Err(err("empty task type"));
        }
        Ok(Upid {
            raw: text.to_owned(),
            node: f[0].to_owned(),
            pid,
            pstart,
            starttime,
            task_type: f[4].to_owned(),
            id: f[5].to_owned(),
            user: f[6].to_owned(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upids_parse_or_are_refused_with_a_reason() {
        let ok =
            Upid::parse("UPID:pve1:00000FA1:001A2FA1:6561F0A0:qmsnapshot:101:cloudnx@pve!agent:")
                .unwrap();
        assert_eq!(ok.node, "pve1");
        assert_eq!(ok.pid, 0xFA1);
        assert_eq!(ok.pstart, 0x1A2FA1);
        assert_eq!(ok.starttime, 0x6561F0A0);
        assert_eq!(ok.task_type, "qmsnapshot");
        assert_eq!(ok.id, "101");
        assert_eq!(ok.user, "cloudnx@pve!agent");
        assert_eq!(ok.to_string(), ok.raw);
        let empty_id = Upid::parse("UPID:n2:0000ABCD:0000ABCD:5F000000:vzdump::root@pam:").unwrap();
        assert_eq!(empty_id.id, "");
        let table = [
            ("", "missing UPID: prefix"),
            (
                "UPID:pve1:1:2:3:qmsnapshot:101:root@pam",
                "missing trailing ':'",
            ),
            (
                "UPID:pve1:1:2:qmsnapshot:101:root@pam:",
                "expected 7 ':'-separated fields",
            ),
            ("UPID::1:2:3:t:1:root@pam:", "empty node"),
            ("UPID:pve1:xyz:2:3:t:1:root@pam:", "pid is not hex"),
            ("UPID:pve1:1:2:zz:t:1:root@pam:", "starttime is not hex"),
            ("UPID:pve1:1:2:3::1:root@pam:", "empty task type"),
        ];
        for (text, why) in table {
            let e = Upid::parse(text).unwrap_err();
            assert_eq!(e.why, why, "{text}");
        }
    }
}
