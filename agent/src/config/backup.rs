//! `[backup]`: what to dump, where to, how long to keep it.

use super::problem::Check;
use super::schema::{fragment, Rules};
use crate::schedule::Schedule;
use std::path::PathBuf;

fragment! {
    /// `[backup]` as written in one file.
    raw RawBackup;
    /// Validated `[backup]`.
    #[derive(Debug, Clone)]
    pub struct BackupConfig {
        /// When the daemon runs the job.
        schedule: Schedule = ("30 2 * * *"),
        /// libpq conninfo for the source cluster.
        connection: String = ("host=/var/run/postgresql user=postgres"),
        /// Databases to dump; empty = every connectable non-template database.
        databases: Vec<String> = (vec![]),
        /// Databases never dumped when `databases` is empty.
        exclude_databases: Vec<String> = (vec![]),
        /// Destination names (all must exist in `[[destinations]]`).
        destinations: Vec<String> = required,
        /// Complete backups older than this are pruned.
        retention_days: u32 = (14),
        /// The newest this-many complete backups are always kept, whatever their age (≥ 1).
        keep_min: u32 = (1),
        /// Armored OpenPGP public keys to encrypt to.
        encrypt_to: Vec<PathBuf> = required,
        /// Where pg_dump lives; None = /usr/lib/postgresql/{server major}/bin, then PATH.
        pg_bin_dir: PathBuf = optional,
        /// `pg_dump --compress` level (0–9).
        compression_level: u8 = (1),
        /// Also back up roles and tablespaces (`pg_dumpall --globals-only`).
        globals: bool = (true),
        /// Count rows exactly in the dump's snapshot (for the drill to compare).
        row_counts: bool = (true),
        /// Databases whose rows are not counted (huge tables); the manifest says so.
        skip_row_counts: Vec<String> = (vec![]),
        /// Initial multipart part size; grows so a stream never needs 10 000 parts.
        part_size_mib: u32 = (8),
        /// Parts in flight per destination (memory ≈ part size × in-flight ×
        /// destinations, per database dumped at once).
        max_in_flight_parts: u32 = (2),
        /// Databases dumped at once, each through its own stream (default:
        /// half the cores, at least 1).
        parallel_databases: u32 = optional,
    }
}

impl BackupConfig {
    /// `parallel_databases`, or its default: half the cores, at least 1.
    pub fn parallel(&self) -> usize {
        self.parallel_databases.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            |n| usize::try_from(n).unwrap_or(1).max(1),
        )
    }
}

/// The sslmode values libpq knows.
const SSLMODES: [&str; 6] = [
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

impl Rules for RawBackup {
    fn rules(&self, c: &mut Check) {
        if let Some(conn) = &self.connection {
            if let Some((msg, hint)) = connection_problem(conn.get_ref()) {
                c.err(conn.span(), msg, hint);
            }
        }
        if let Some(keys) = &self.encrypt_to {
            if c.other_files {
                for k in keys.get_ref().iter().filter(|k| k.is_absolute()) {
                    if let Err(e) = std::fs::metadata(k) {
                        c.err(
                            keys.span(),
                            format!("`encrypt_to`: cannot read public key {}: {e}", k.display()),
                            "export it with gpg --export --armor FPR > FILE",
                        );
                    }
                }
            }
            if keys.get_ref().is_empty() {
                c.err(
                    keys.span(),
                    "`encrypt_to` is empty: backups must be encrypted",
                    "list at least one armored OpenPGP public key file",
                );
            }
        }
        if let Some(l) = &self.compression_level {
            if *l.get_ref() > 9 {
                c.err(
                    l.span(),
                    format!("compression_level {} is out of range", l.get_ref()),
                    "use 0 (none) to 9 (smallest)",
                );
            }
        }
        if let Some(k) = &self.keep_min {
            if *k.get_ref() == 0 {
                c.err(
                    k.span(),
                    "keep_min = 0 would let retention delete the last good backup",
                    "use keep_min = 1 or more",
                );
            }
        }
        for (key, v) in [
            ("part_size_mib", &self.part_size_mib),
            ("max_in_flight_parts", &self.max_in_flight_parts),
            ("parallel_databases", &self.parallel_databases),
        ] {
            if let Some(n) = v {
                if *n.get_ref() == 0 {
                    c.err(
                        n.span(),
                        format!("`{key}` must be at least 1"),
                        "remove the key to use the default",
                    );
                }
            }
        }
        if let Some(p) = &self.part_size_mib {
            if *p.get_ref() < 5 {
                c.err(
                    p.span(),
                    "S3 requires parts of at least 5 MiB",
                    "use part_size_mib = 5 or more",
                );
            }
        }
    }
}

/// What is wrong with a libpq conninfo, judged by the parser the backup job
/// itself uses ([`crate::pg::ConnInfo::parse`]), so `check-config` accepts
/// exactly what the job can use. The message never quotes the value.
fn connection_problem(conninfo: &str) -> Option<(String, String)> {
    const KEYWORDS: &str = "host, hostaddr, port, user, dbname, sslmode, application_name, options, connect_timeout, keepalives, target_session_attrs";
    let pairs = conninfo_pairs(conninfo);
    let parsed = crate::pg::ConnInfo::parse(conninfo);
    let has_password = pairs.iter().any(|(k, _)| *k == "password")
        || parsed.as_ref().is_ok_and(|c| {
            c.libpq_env(None)
                .iter()
                .any(|(var, _)| *var == "PGPASSWORD")
        });
    if has_password {
        return Some((
            "`connection` holds a password: it would sit in the configuration in clear, readable by whoever can read the file".into(),
            "remove the password from `connection` and put it in the agent user's ~/.pgpass (mode 0600; or the file PGPASSFILE names), or use peer or cert authentication".into(),
        ));
    }
    if let Some((_, mode)) = pairs.iter().find(|(k, _)| *k == "sslmode") {
        if !SSLMODES.contains(&mode.as_str()) {
            return Some((
                "`connection`: the value of `sslmode` is not an sslmode libpq knows".into(),
                format!("use sslmode={}", SSLMODES.join(", ")),
            ));
        }
        // The job's connections are plain (pg::ConnInfo::connect uses NoTls):
        // a mode that insists on TLS fails every run; `allow` is unknown to it.
        if !matches!(mode.as_str(), "disable" | "prefer") {
            return Some((
                "`connection`: the agent's PostgreSQL client cannot meet this `sslmode` (it does not speak TLS)".into(),
                "use sslmode=disable or prefer, over the Unix socket or a trusted network".into(),
            ));
        }
    }
    match parsed {
        Ok(_) => None,
        // tokio-postgres names the keyword or the option, never the value.
        Err(e) => Some((
            format!(
                "`connection` is not a usable libpq connection string: {}",
                e.root_cause()
            ),
            format!("a libpq conninfo of keyword=value pairs; the agent knows: {KEYWORDS}"),
        )),
    }
}

/// The `keyword=value` pairs of a conninfo string, as far as they can be
/// read (libpq syntax: blanks around `=`, values bare or 'single-quoted'
/// with backslash escapes). A URL yields none.
fn conninfo_pairs(s: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) || key.contains("://") {
            break;
        }
        let mut value = String::new();
        let mut chars = rest[eq + 1..].trim_start().char_indices().peekable();
        let base = rest.len() - rest[eq + 1..].trim_start().len();
        let quoted = chars.peek().is_some_and(|(_, c)| *c == '\'');
        if quoted {
            chars.next();
        }
        let mut end = rest.len();
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    end = base + i + 1;
                    break;
                }
                c if c.is_whitespace() && !quoted => {
                    end = base + i;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value));
        rest = rest[end..].trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_pairs_follow_libpq_quoting() {
        assert_eq!(
            conninfo_pairs("host=/x  user = 'a b\\'c' sslmode=require"),
            vec![
                ("host", "/x".to_owned()),
                ("user", "a b'c".to_owned()),
                ("sslmode", "require".to_owned())
            ]
        );
        assert!(conninfo_pairs("postgresql://u:p@h/db?sslmode=x").is_empty());
    }

    #[test]
    fn connection_problems_name_the_keyword_and_never_the_value() {
        for (conninfo, want) in [
            ("host=/x password=Hunter2Secret", "holds a password"),
            ("host=/x password = 'Hunter2 Secret'", "holds a password"),
            ("postgresql://u:Hunter2Secret@h/db", "holds a password"),
            ("host=/x sslmode=Hunter2Secret", "`sslmode`"),
            ("host=/x sslmod=require", "unknown option `sslmod`"),
            ("host=/x sslmode=verify-full", "cannot meet this `sslmode`"),
            ("host=/x sslmode=require", "cannot meet this `sslmode`"),
            (
                "host=/x sslmode=bogus password=Hunter2Secret",
                "holds a password",
            ),
        ] {
            let (msg, hint) = connection_problem(conninfo).expect(conninfo);
            assert!(msg.contains(want), "{conninfo}: {msg}");
            assert!(
                !msg.contains("Hunter2") && !hint.contains("Hunter2"),
                "{msg} {hint}"
            );
        }
        assert_eq!(
            connection_problem("host=/var/run/postgresql user=postgres sslmode=disable"),
            None
        );
    }
}
