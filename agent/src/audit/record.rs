//! One line of the log: what callers hand in ([`AuditEntry`]), what is
//! written ([`Record`], fields in SPEC §7 order), and the hash that chains lines.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of record 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a caller hands to the log; `seq`, `ts` and `prev_hash` are added here.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// Client certificate SAN, `schedule`, or `cli:<unix user>`.
    pub actor: String,
    /// Peer address for API requests.
    pub source_ip: Option<String>,
    /// HTTP method for API requests.
    pub method: Option<String>,
    /// Request path for API requests (job path for jobs).
    pub path: Option<String>,
    /// HTTP status for API requests.
    pub status: Option<u16>,
    /// `X-Request-Id` or a generated id; the job id for job records.
    pub request_id: Option<String>,
    /// HTTP User-Agent.
    pub user_agent: Option<String>,
    /// Time the action took.
    pub duration_ms: Option<u64>,
    /// Dotted action name, e.g. `job.start`, `backup.retention.delete`.
    pub action: String,
    /// Action-specific detail.
    pub detail: serde_json::Value,
}

/// One line of the log, in field order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 1, 2, 3, … continuous across restarts and rotations.
    pub seq: u64,
    /// RFC 3339 UTC.
    pub ts: String,
    /// See [`AuditEntry`].
    pub actor: String,
    /// See [`AuditEntry`].
    pub source_ip: Option<String>,
    /// See [`AuditEntry`].
    pub method: Option<String>,
    /// See [`AuditEntry`].
    pub path: Option<String>,
    /// See [`AuditEntry`].
    pub status: Option<u16>,
    /// See [`AuditEntry`].
    pub request_id: Option<String>,
    /// See [`AuditEntry`].
    pub user_agent: Option<String>,
    /// See [`AuditEntry`].
    pub duration_ms: Option<u64>,
    /// See [`AuditEntry`].
    pub action: String,
    /// See [`AuditEntry`].
    pub detail: serde_json::Value,
    /// Lowercase hex SHA-256 of the previous line's bytes (without newline).
    pub prev_hash: String,
}

impl Record {
    /// The record that follows `prev` (`None` for record 1), stamped now.
    pub fn next(prev: Option<&Head>, entry: AuditEntry) -> Record {
        let (seq, prev_hash) = match prev {
            None => (1, GENESIS.to_owned()),
            Some(h) => (h.seq + 1, h.hash.clone()),
        };
        Record {
            seq,
            ts: crate::util::now_rfc3339(),
            actor: entry.actor,
            source_ip: entry.source_ip,
            method: entry.method,
            path: entry.path,
            status: entry.status,
            request_id: entry.request_id,
            user_agent: entry.user_agent,
            duration_ms: entry.duration_ms,
            action: entry.action,
            detail: entry.detail,
            prev_hash,
        }
    }

    /// The exact line bytes, without the newline.
    pub fn to_line(&self) -> Vec<u8> {
        // Serialising a struct of strings, numbers and a Value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parse a line and check it is in the one form the appender writes
    /// (every field present, in order, compact): anything else was not written by us.
    pub fn parse_canonical(line: &[u8]) -> Result<Record, String> {
        let rec: Record =
            serde_json::from_slice(line).map_err(|e| format!("not an audit record ({e})"))?;
        if rec.to_line() != line {
            return Err(
                "not in the form the agent writes (a field was added, removed, \
                        reordered or re-spaced)"
                    .into(),
            );
        }
        Ok(rec)
    }
}

/// The newest record of the chain: its `seq` and the hash of its line
/// (also a backup manifest's `audit_head`, SPEC §11).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    /// `seq` of the newest record.
    pub seq: u64,
    /// Lowercase hex SHA-256 of its line.
    pub hash: String,
}

impl Head {
    /// The head made by one whole line.
    pub fn of_line(line: &[u8]) -> Result<Head, String> {
        let rec = Record::parse_canonical(line)?;
        Ok(Head {
            seq: rec.seq,
            hash: sha256_hex(line),
        })
    }
}

/// The action of a key rotation record (SPEC §11).
pub const KEY_ROTATED: &str = "audit.key_rotated";

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_one_links_to_genesis_and_the_next_to_the_previous_line() {
        let r1 = Record::next(None, AuditEntry::default());
        assert_eq!((r1.seq, r1.prev_hash.as_str()), (1, GENESIS));
        let line = r1.to_line();
        let head = Head::of_line(&line).unwrap();
        let r2 = Record::next(Some(&head), AuditEntry::default());
        assert_eq!(r2.seq, 2);
        assert_eq!(r2.prev_hash, sha256_hex(&line));
    }

    #[test]
    fn lines_not_in_the_written_form_are_refused() {
        let line = Record::next(None, AuditEntry::default()).to_line();
        assert!(Record::parse_canonical(&line).is_ok());
        let text = String::from_utf8(line).unwrap();
        for bad in [
            text.replacen("{\"seq\"", "{ \"seq\"", 1),
            text.replacen(",\"source_ip\":null", "", 1),
            text.replacen("}", ",\"extra\":1}", 1),
            text.replacen("\"seq\":1", "\"seq\":\"1\"", 1),
        ] {
            assert!(Record::parse_canonical(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
