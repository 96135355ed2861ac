//! Config loader: bytes → `agent.toml` (+ drop-ins) → `config::load`.
//!
//! The input is split at NUL bytes: the first part is `agent.toml`, the next
//! (up to three) are `agent.d/10-N.toml`. Properties: no panic; every problem
//! names one of the files we wrote (or none); an extra empty drop-in changes
//! nothing (merging is by key, not by file count).
#![no_main]

use cloudnx_agent::config;
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// Load, then describe the result with the file list cleared (it differs by design).
fn load(main: &Path) -> (Result<String, Vec<config::Problem>>, Vec<PathBuf>) {
    match config::load(main) {
        Ok(mut c) => {
            let files = std::mem::take(&mut c.files);
            (Ok(format!("{c:?}")), files)
        }
        Err(p) => (Err(p.0), vec![]),
    }
}

fuzz_target!(|data: &[u8]| {
    let root = dir();
    let dropins = root.join("agent.d");
    let _ = std::fs::remove_dir_all(&dropins);
    std::fs::create_dir_all(&dropins).expect("agent.d");
    let main = root.join("agent.toml");
    let mut parts = data.splitn(4, |&b| b == 0);
    std::fs::write(&main, parts.next().unwrap_or_default()).expect("write agent.toml");
    let mut written = vec![main.clone()];
    for (i, part) in parts.enumerate() {
        let p = dropins.join(format!("10-{i}.toml"));
        std::fs::write(&p, part).expect("write drop-in");
        written.push(p);
    }

    let (first, files) = load(&main);
    match &first {
        Ok(_) => assert_eq!(
            files, written,
            "load must read exactly the main file and its drop-ins, in order"
        ),
        Err(problems) => {
            assert!(
                !problems.is_empty(),
                "an Err must carry at least one problem"
            );
            for p in problems {
                assert!(!p.to_string().is_empty());
                if let Some(f) = &p.file {
                    assert!(
                        written.contains(f) || f.starts_with(root),
                        "problem names a file we did not write: {f:?}"
                    );
                }
            }
        }
    }

    std::fs::write(dropins.join("99-empty.toml"), b"").expect("write empty drop-in");
    let (second, _) = load(&main);
    assert_eq!(
        first, second,
        "an empty drop-in must not change the configuration"
    );
});
