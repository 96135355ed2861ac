//! Backup `manifest.json` as the restore drill reads it from a destination.
//!
//! Properties: no panic; an accepted manifest serialises and parses back to
//! the same value (the backup writes what the drill reads); the layout helpers
//! never panic on its names; any non-empty database name has a directory
//! segment that reads back as that name, and its keys lie under it.
#![no_main]

use cloudnx_agent::jobs::backup::manifest::{
    database_dir, manifest_key, object_key, parse_segment, segment, Content, Manifest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&m).expect("serialise");
    let again: Manifest = serde_json::from_slice(&bytes).expect("reparse what we wrote");
    assert_eq!(m, again, "manifest must round-trip");
    let pretty = serde_json::to_vec_pretty(&m).expect("serialise pretty");
    assert_eq!(
        m,
        serde_json::from_slice::<Manifest>(&pretty).expect("reparse pretty")
    );

    let db = &m.database;
    let seg = segment(db, Content::Database);
    if !db.is_empty() {
        assert_eq!(
            parse_segment(&seg),
            Some((db.clone(), Content::Database)),
            "one name, one directory"
        );
    }
    let dir = database_dir(&m.host_id, &seg);
    assert!(object_key(&m.host_id, &seg, &m.started_at).starts_with(&dir));
    assert!(manifest_key(&m.host_id, &seg, &m.started_at).starts_with(&dir));
});
