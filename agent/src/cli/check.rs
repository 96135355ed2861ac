//! `check-config`: validate and say what is enabled.

use super::{load_or_report, EXIT_OK};
use crate::jobs::JobKind;
use std::path::PathBuf;

/// `check-config`: validate, print all problems, or a summary of what is enabled.
pub fn check_config(flag: Option<PathBuf>) -> u8 {
    let (_, cfg) = match load_or_report(flag) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "configuration OK ({})",
        cfg.files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "host_id {}; state_dir {}; metrics {}",
        cfg.host_id,
        cfg.state_dir.display(),
        cfg.textfile_dir.join(crate::metrics::FILE_NAME).display()
    );
    for n in &cfg.notices {
        println!("note: {n}");
    }
    let now = chrono::Utc::now();
    for k in JobKind::ALL {
        match k.schedule(&cfg) {
            None if k.configured(&cfg) => println!("  {:<14} on command only", k.as_str()),
            None => println!("  {:<14} off (no [{}] section)", k.as_str(), k.section()),
            Some(s) => {
                let next = s.next_after(now, cfg.timezone).map_or("never".into(), |t| {
                    format!(
                        "{} ({})",
                        t.format("%Y-%m-%dT%H:%M:%SZ"),
                        t.with_timezone(&cfg.timezone).format("%Y-%m-%d %H:%M %Z")
                    )
                });
                println!(
                    "  {:<14} \"{}\" in {}; next {}",
                    k.as_str(),
                    s.expr(),
                    cfg.timezone,
                    next
                );
            }
        }
    }
    EXIT_OK
}
