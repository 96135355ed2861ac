//! `audit verify`: stream every file of the chain in order and every
//! checkpoint alongside it, and name the first bad `seq` and what is wrong.
//!
//! A link broken into record j is ambiguous on its own (record j-1 was
//! changed, or j's `prev_hash` was); the next record or a checkpoint at j
//! settles it: if j+1 still links to j, or a checkpoint matches j, then j is
//! intact and j-1 was changed; otherwise j was.

use super::checkpoint::Checkpoint;
use super::files::{first_gap, LogFiles};
use super::record::{sha256_hex, Head, Record, GENESIS, KEY_ROTATED};
use anyhow::Context;
use ed25519_dalek::VerifyingKey;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The first bad (or first missing) `seq`.
    pub seq: u64,
    /// What is wrong, and where.
    pub what: String,
}

/// What verification found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Whole records that verified (before any problem).
    pub records: u64,
    /// The files read, in chain order.
    pub files: Vec<PathBuf>,
    /// The newest verified record.
    pub head: Option<Head>,
    /// Checkpoints whose signature and hash verified.
    pub checkpoints: u64,
    /// The newest verified checkpoint.
    pub last_checkpoint: Option<Checkpoint>,
    /// Things an auditor should know that do not break the chain
    /// (a torn tail at the end, torn writes set aside earlier).
    pub notes: Vec<String>,
    /// The first problem, if any: the log does not verify.
    pub problem: Option<Problem>,
}

/// The public keys checkpoints are checked with (SPEC §11). The first
/// checkpoint's key anchors the chain; a later key is in force only after an
/// `audit.key_rotated` record naming it was sealed by the key before it.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// Published keys by kid (`{path}.keys/`, or `keys/` off the host).
    pub by_kid: BTreeMap<String, VerifyingKey>,
    /// The key for checkpoints without a kid (written before SPEC §11).
    pub fallback: Option<VerifyingKey>,
}

impl Keys {
    /// The keys of a local log: its published keys and the configured one.
    pub fn local(files: &LogFiles, configured: Option<VerifyingKey>) -> anyhow::Result<Keys> {
        let mut by_kid = super::key::published(&files.keys_dir())?;
        if let Some(k) = &configured {
            by_kid.insert(super::key::kid(k), *k);
        }
        // Checkpoints without a kid (written before SPEC §11) were signed by
        // the first key: the one published first (at the first seal after
        // the upgrade, before any rotation), else the configured key.
        let first_published = std::fs::read_dir(files.keys_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let kid = e.file_name().to_str()?.strip_suffix(".pem")?.to_owned();
                let t = e.metadata().and_then(|m| m.modified()).ok()?;
                Some((t, kid))
            })
            .min()
            .and_then(|(_, kid)| by_kid.get(&kid).copied());
        let fallback = first_published.or(configured);
        Ok(Keys { by_kid, fallback })
    }

    /// No key at all.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.fallback.is_none()
    }
}

/// What an `audit.key_rotated` record says.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// The key in force before.
    pub old_kid: String,
    /// The key in force once this record is sealed by the old one.
    pub new_kid: String,
    /// The new key.
    pub new_key: VerifyingKey,
}

impl Rotation {
    /// Read a rotation record's detail; the new key must carry the kid it names.
    pub fn parse(detail: &serde_json::Value) -> Result<Rotation, String> {
        let field = |k: &str| {
            detail
                .get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("its detail has no {k}"))
        };
        let (old_kid, new_kid, pem) = (
            field("old_kid")?,
            field("new_kid")?,
            field("new_public_key")?,
        );
        let (kid, new_key) =
            super::key::from_public_pem(&pem).map_err(|e| format!("new_public_key: {e}"))?;
        if kid != new_kid {
            return Err(format!(
                "its new_public_key has kid {kid}, not the new_kid {new_kid} it names"
            ));
        }
        Ok(Rotation {
            old_kid,
            new_kid,
            new_key,
        })
    }
}

/// A file opened for reading up to the length it had when opened.
struct Opened {
    path: PathBuf,
    reader: BufReader<std::io::Take<File>>,
}

fn open_upto(path: &Path) -> anyhow::Result<Option<Opened>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let len = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    Ok(Some(Opened {
        path: path.to_owned(),
        reader: BufReader::with_capacity(256 << 10, f.take(len)),
    }))
}

/// Read the next line into `buf` (newline stripped). `Ok(Some(false))`: the
/// file ended without a newline (the bytes are in `buf`).
fn next_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    if r.read_until(b'\n', buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        Ok(Some(true))
    } else {
        Ok(Some(false))
    }
}

/// The checkpoints, read one at a time, each checked for signature and order.
struct Checkpoints<'a> {
    file: Option<Opened>,
    line_no: u64,
    last_seq: u64,
    keys: Keys,
    host_id: &'a str,
    buf: Vec<u8>,
}

/// A checkpoint whose signature verified, with the kid of the key that made it.
type Read1 = (u64, Checkpoint, String);

impl Checkpoints<'_> {
    /// The next checkpoint with its line number; a problem if it is bad.
    fn next(&mut self, notes: &mut Vec<String>) -> anyhow::Result<Result<Option<Read1>, Problem>> {
        let Some(f) = self.file.as_mut() else {
            return Ok(Ok(None));
        };
        let whole = match next_line(&mut f.reader, &mut self.buf)
            .with_context(|| format!("reading {}", f.path.display()))?
        {
            None => return Ok(Ok(None)),
            Some(w) => w,
        };
        self.line_no += 1;
        let at = format!("{} line {}", f.path.display(), self.line_no);
        if !whole {
            notes.push(format!(
                "{at}: a torn checkpoint write of {} bytes at the end (set aside at the next seal)",
                self.buf.len()
            ));
            return Ok(Ok(None));
        }
        let cp: Checkpoint = match serde_json::from_slice(&self.buf) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(Problem {
                    seq: self.last_seq + 1,
                    what: format!("{at} is not a checkpoint ({e})"),
                }))
            }
        };
        if cp.seq <= self.last_seq {
            return Ok(Err(Problem {
                seq: cp.seq,
                what: format!(
                    "{at}: checkpoint for seq {} follows one for seq {}: checkpoints reordered or duplicated",
                    cp.seq, self.last_seq
                ),
            }));
        }
        let key = match &cp.kid {
            Some(k) => self.keys.by_kid.get(k).copied(),
            None => self.keys.fallback,
        };
        let Some(key) = key else {
            return Ok(Err(Problem {
                seq: cp.seq,
                what: match &cp.kid {
                    Some(k) => format!("{at}: no public key with kid {k} to check the checkpoint signature with (not published, and no rotation record introduced it)"),
                    None => format!("{at}: no public key to check the checkpoint signature with"),
                },
            }));
        };
        if let Err(e) = cp.check_signature(&key, self.host_id) {
            return Ok(Err(Problem {
                seq: cp.seq,
                what: format!("{at}: checkpoint for seq {}: {e}", cp.seq),
            }));
        }
        self.last_seq = cp.seq;
        let kid = super::key::kid(&key);
        Ok(Ok(Some((self.line_no, cp, kid))))
    }
}

/// A link into record `seq` that did not match; settled by what follows.
struct Pending {
    seq: u64,
    hash: String,
}

fn blame_previous(j: u64) -> Problem {
    Problem {
        seq: j - 1,
        what: format!(
            "record seq {} was changed: its hash no longer matches the prev_hash that seq {j} recorded",
            j - 1
        ),
    }
}

fn blame_self(j: u64, why: &str) -> Problem {
    Problem {
        seq: j,
        what: format!("record seq {j} was changed: {why}"),
    }
}

/// Verify the log at `files` (blocking, streaming). `key`: the checkpoint
/// public key (without it any checkpoint is a problem). I/O errors are `Err`.
pub fn verify(files: &LogFiles, host_id: &str, keys: &Keys) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // Open every file under the writers' lock (shared), so a rotation or an
    // append in progress cannot shift files under us; then read without it.
    let lock = File::open(files.lock())
        .ok()
        .and_then(|f| nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockShared).ok());
    let retained = files.retained_from()?;
    let from = retained.map_or(1, |r| r.first_file);
    let nums: Vec<u64> = files
        .rotated_numbers()?
        .into_iter()
        .filter(|n| *n >= from)
        .collect();
    let shifted: Vec<u64> = nums.iter().map(|n| n - from + 1).collect();
    let gap = first_gap(&shifted).map(|g| g + from - 1);
    let mut opened = Vec::new();
    for n in nums.iter().take_while(|n| gap.is_none_or(|g| **n < g)) {
        opened.extend(open_upto(&files.rotated(*n))?);
    }
    if gap.is_none() {
        opened.extend(open_upto(&files.active)?);
    }
    let mut cps = Checkpoints {
        file: open_upto(&files.checkpoints())?,
        line_no: 0,
        last_seq: 0,
        keys: keys.clone(),
        host_id,
        buf: Vec::new(),
    };
    drop(lock);

    report.problem = walk(
        &mut report,
        &mut opened,
        &mut cps,
        gap.map(|g| files.rotated(g)),
        retained.map(|r| r.first_seq),
    )?;
    if let Some(r) = retained {
        report.notes.push(format!(
            "records before seq {} were removed by local retention (whole files, once off the host; \
             see the audit.retention records): the chain is verified from seq {}, anchored by the first checkpoint after it",
            r.first_seq, r.first_seq
        ));
    }
    Ok(report)
}

/// Read `opened` in order against the checkpoints; `gap`: a rotated file
/// missing after the opened ones.
fn walk(
    report: &mut Report,
    opened: &mut [Opened],
    cps: &mut Checkpoints<'_>,
    gap: Option<PathBuf>,
    start: Option<u64>,
) -> anyhow::Result<Option<Problem>> {
    // After local retention the chain starts at `start`: the first kept
    // record's prev_hash is taken as given, and the first signed checkpoint
    // at or after it (whose hash covers every line back to it) anchors it.
    let mut expected_seq = start.unwrap_or(1);
    let mut expected_prev = GENESIS.to_owned();
    let mut pending: Option<Pending> = None;
    // The key chain: the kid in force, and a rotation waiting for its seal.
    let mut in_force: Option<String> = None;
    let mut rotation: Option<(u64, Rotation)> = None;
    let mut next_cp = match cps.next(&mut report.notes)? {
        Ok(c) => c,
        Err(p) => return Ok(Some(p)),
    };
    // Checkpoints of removed records: their signatures were checked; the
    // newest of them names the key in force.
    while let Some((_, _, kid)) = next_cp.as_ref().filter(|(_, c, _)| c.seq < expected_seq) {
        in_force = Some(kid.clone());
        next_cp = match cps.next(&mut report.notes)? {
            Ok(c) => c,
            Err(p) => return Ok(Some(p)),
        };
    }
    let mut line = Vec::new();
    let last_file = opened.len().saturating_sub(1);
    for (fi, f) in opened.iter_mut().enumerate() {
        report.files.push(f.path.clone());
        let mut line_no = 0u64;
        loop {
            let whole = match next_line(&mut f.reader, &mut line)
                .with_context(|| format!("reading {}", f.path.display()))?
            {
                None => break,
                Some(w) => w,
            };
            line_no += 1;
            let at = format!("{} line {line_no}", f.path.display());
            if !whole {
                if let Some(p) = pending.take() {
                    return Ok(Some(blame_previous(p.seq)));
                }
                if fi == last_file {
                    report.notes.push(format!(
                        "{at}: a torn write of {} bytes after seq {} at the end of the log \
                         (a crash interrupted an append; the next append sets it aside and audits it)",
                        line.len(),
                        expected_seq - 1
                    ));
                    break;
                }
                return Ok(Some(Problem {
                    seq: expected_seq,
                    what: format!("{at}: the file ends in the middle of a record (truncated) before seq {expected_seq}"),
                }));
            }
            let rec = match Record::parse_canonical(&line) {
                Ok(r) => r,
                Err(e) => {
                    if let Some(p) = pending.take() {
                        return Ok(Some(blame_previous(p.seq)));
                    }
                    return Ok(Some(Problem {
                        seq: expected_seq,
                        what: format!("{at} (where seq {expected_seq} belongs) is {e}"),
                    }));
                }
            };
            if rec.seq != expected_seq {
                if let Some(p) = pending.take() {
                    return Ok(Some(blame_previous(p.seq)));
                }
                let what = if rec.seq > expected_seq {
                    format!("{at}: record seq {expected_seq} is missing or out of order (found seq {} where it belongs): records deleted or moved", rec.seq)
                } else {
                    format!("{at}: found seq {} where seq {expected_seq} belongs: records reordered or duplicated", rec.seq)
                };
                return Ok(Some(Problem {
                    seq: expected_seq,
                    what,
                }));
            }
            let hash = sha256_hex(&line);
            if start.is_some_and(|s| s == rec.seq && s > 1) {
                expected_prev.clone_from(&rec.prev_hash);
            }
            if let Some(p) = pending.take() {
                return Ok(Some(if rec.prev_hash == p.hash {
                    blame_previous(p.seq)
                } else {
                    blame_self(p.seq, "its prev_hash no longer links the previous record, and the next record no longer links to it")
                }));
            }
            if rec.prev_hash != expected_prev {
                if rec.seq == 1 {
                    return Ok(Some(blame_self(
                        1,
                        "record 1 must carry a prev_hash of 64 zeros",
                    )));
                }
                pending = Some(Pending {
                    seq: rec.seq,
                    hash: hash.clone(),
                });
            }
            if rec.action == KEY_ROTATED {
                let r = match Rotation::parse(&rec.detail) {
                    Ok(r) => r,
                    Err(e) => {
                        return Ok(Some(blame_self(
                            rec.seq,
                            &format!("a key rotation record that does not hold: {e}"),
                        )))
                    }
                };
                if let Some(k) = in_force.as_ref().filter(|k| **k != r.old_kid) {
                    return Ok(Some(Problem {
                        seq: rec.seq,
                        what: format!(
                            "the key rotation at seq {} names old kid {}, but the key in force is {k}",
                            rec.seq, r.old_kid
                        ),
                    }));
                }
                cps.keys.by_kid.insert(r.new_kid.clone(), r.new_key);
                rotation = Some((rec.seq, r));
            }
            if let Some((cp_line, cp, kid)) = next_cp.as_ref().filter(|(_, c, _)| c.seq == rec.seq)
            {
                if cp.hash != hash {
                    return Ok(Some(blame_self(rec.seq, &format!(
                        "its hash {hash} differs from the one sealed in signed checkpoint line {cp_line} ({})",
                        cp.hash
                    ))));
                }
                if let Some(p) = pending.take() {
                    return Ok(Some(blame_previous(p.seq)));
                }
                let want = in_force.get_or_insert_with(|| kid.clone());
                if want != kid {
                    return Ok(Some(Problem {
                        seq: cp.seq,
                        what: format!(
                            "signed checkpoint line {cp_line} for seq {} is signed by key {kid}, but the key in force is {want}: \
                             a new key takes over only after an {KEY_ROTATED} record sealed by the key before it (a forged rotation)",
                            cp.seq
                        ),
                    }));
                }
                if let Some((_, r)) =
                    rotation.take_if(|(at, r)| *at <= cp.seq && r.old_kid == *want)
                {
                    *want = r.new_kid;
                }
                report.checkpoints += 1;
                report.last_checkpoint = Some(cp.clone());
                next_cp = match cps.next(&mut report.notes)? {
                    Ok(c) => c,
                    Err(p) => return Ok(Some(p)),
                };
            }
            if rec.action == "audit.torn_tail" {
                report.notes.push(torn_note(&rec));
            }
            expected_prev = hash.clone();
            expected_seq += 1;
            if pending.is_none() {
                report.records += 1;
                report.head = Some(Head { seq: rec.seq, hash });
            }
        }
    }
    if let Some(missing) = gap {
        return Ok(Some(Problem {
            seq: expected_seq,
            what: format!(
                "the rotated file {} is missing (later files exist): records from seq {expected_seq} on cannot be checked",
                missing.display()
            ),
        }));
    }
    if let Some(p) = pending {
        return Ok(Some(Problem {
            seq: p.seq - 1,
            what: format!(
                "record seq {} does not link to seq {}: seq {} was changed (or the prev_hash of seq {})",
                p.seq, p.seq - 1, p.seq - 1, p.seq
            ),
        }));
    }
    if let Some((cp_line, cp, _)) = next_cp {
        let end = expected_seq - 1;
        return Ok(Some(Problem {
            seq: expected_seq,
            what: format!(
                "signed checkpoint line {cp_line} seals seq {} but the log ends at seq {end}: records {}..={} were removed (truncated)",
                cp.seq, expected_seq, cp.seq
            ),
        }));
    }
    Ok(None)
}

/// What an auditor should know about a torn write the appender set aside.
fn torn_note(rec: &Record) -> String {
    let d = &rec.detail;
    let side = d
        .get("set_aside_to")
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    let bytes = d
        .get("torn_bytes")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    let want = d.get("sha256").and_then(|v| v.as_str()).unwrap_or("");
    let state = match std::fs::read(side) {
        Ok(b) if sha256_hex(&b) == want => "present, sha256 matches".to_owned(),
        Ok(_) => "present but its sha256 differs from the record".to_owned(),
        Err(e) => format!("not readable: {e}"),
    };
    format!(
        "seq {}: a torn write of {bytes} bytes (sha256 {want}) was set aside to {side} ({state})",
        rec.seq
    )
}
