//! Proxmox VE API responses: every typed `{"data": …}` body the client
//! decodes, error bodies, permission messages and UPIDs.
//!
//! Properties: no panic on any body; a parsed UPID keeps its exact text and
//! its fields re-assemble into it (the API wants the original back); the
//! `current` pseudo-snapshot is recognised by name only.
#![no_main]

use cloudnx_agent::pve::upid::Upid;
use cloudnx_agent::pve::{
    decode_data, error_body, privilege_in, ClusterGuest, NodeEntry, SnapshotEntry, TaskStatus,
};
use libfuzzer_sys::fuzz_target;

fn check_upid(text: &str) {
    if let Ok(u) = Upid::parse(text) {
        assert_eq!(u.raw, text);
        assert_eq!(u.to_string(), text);
        // pid/pstart/starttime are hex in the text; their values must agree with it.
        let f: Vec<&str> = text["UPID:".len()..text.len() - 1].split(':').collect();
        assert_eq!(f.len(), 7);
        assert_eq!(f[0], u.node);
        assert_eq!(u64::from_str_radix(f[1], 16).ok(), Some(u64::from(u.pid)));
        assert_eq!(u64::from_str_radix(f[2], 16).ok(), Some(u.pstart));
        assert_eq!(i64::from_str_radix(f[3], 16).ok(), Some(u.starttime));
        assert_eq!(
            (f[4], f[5], f[6]),
            (u.task_type.as_str(), u.id.as_str(), u.user.as_str())
        );
        assert!(!u.node.is_empty() && !u.task_type.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode_data::<Vec<SnapshotEntry>>(data) {
        for s in &v {
            assert_eq!(s.is_current(), s.name == "current");
        }
    }
    let _ = decode_data::<Vec<ClusterGuest>>(data);
    let _ = decode_data::<Vec<NodeEntry>>(data);
    if let Ok(t) = decode_data::<TaskStatus>(data) {
        assert_eq!(t.stopped(), t.status == "stopped");
    }
    // POST …/snapshot and DELETE …/snapshot/{name} answer with a UPID string.
    if let Ok(s) = decode_data::<String>(data) {
        check_upid(&s);
    }
    let (message, errors) = error_body(data);
    if let Some(m) = &message {
        assert!(
            !m.is_empty() && m.trim() == m,
            "message must be trimmed and non-empty"
        );
        let _ = privilege_in(m);
    }
    drop(errors);

    let text = String::from_utf8_lossy(data);
    check_upid(&text);
    let _ = privilege_in(&text);
});
