//! Where the log lives on disk: the active file `{path}`, rotated files
//! `{path}.1`, `{path}.2`, … (oldest first, never renamed twice), the lock
//! `{path}.lock`, checkpoints `{path}.checkpoints`, and set-aside torn tails
//! `{path}.torn-{seq}-{unix time}`. Also reading the tail of a line file
//! (last whole line, torn fragment) without reading the whole file.

use anyhow::Context;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The file names belonging to one log.
#[derive(Debug, Clone)]
pub struct LogFiles {
    /// The active file (`[audit] path`).
    pub active: PathBuf,
}

impl LogFiles {
    /// The files of the log at `active`.
    pub fn new(active: &Path) -> Self {
        LogFiles {
            active: active.to_owned(),
        }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut s = self.active.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    }

    /// The lock every writer (appends, checkpoints, rotation) holds.
    pub fn lock(&self) -> PathBuf {
        self.sibling(".lock")
    }

    /// The signed checkpoints.
    pub fn checkpoints(&self) -> PathBuf {
        self.sibling(".checkpoints")
    }

    /// Every public key that signed checkpoints, as `{kid}.pem` (SPEC §11).
    pub fn keys_dir(&self) -> PathBuf {
        self.sibling(".keys")
    }

    /// Where local retention records the first file and record it kept.
    pub fn retained(&self) -> PathBuf {
        self.sibling(".retained")
    }

    /// What local retention removed (None: nothing, the chain starts at seq 1).
    pub fn retained_from(&self) -> anyhow::Result<Option<Retained>> {
        let p = self.retained();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                anyhow::anyhow!(
                    "{} is damaged ({e}); it names the first rotated file local retention kept",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Rotated file number `n`.
    pub fn rotated(&self, n: u64) -> PathBuf {
        self.sibling(&format!(".{n}"))
    }

    /// Where a torn tail found after record `after_seq` is set aside.
    pub fn torn_side_file(&self, of: &Path, after_seq: u64) -> PathBuf {
        let mut s = of.as_os_str().to_owned();
        s.push(format!(
            ".torn-{after_seq}-{}",
            chrono::Utc::now().timestamp_millis()
        ));
        PathBuf::from(s)
    }

    fn dir(&self) -> &Path {
        self.active
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    fn base_name(&self) -> String {
        self.active
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Numbers of the rotated files present, ascending.
    pub fn rotated_numbers(&self) -> anyhow::Result<Vec<u64>> {
        let base = self.base_name();
        let rd = match std::fs::read_dir(self.dir()) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("listing {}", self.dir().display())),
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e.with_context(|| format!("listing {}", self.dir().display()))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        Ok(rotated_numbers(&base, &names))
    }

    /// Every file of the chain in order (rotated oldest first, then the active
    /// file if present), or the first missing rotated number.
    pub fn chain_files(&self) -> anyhow::Result<Result<Vec<PathBuf>, u64>> {
        let nums = self.rotated_numbers()?;
        if let Some(missing) = first_gap(&nums) {
            return Ok(Err(missing));
        }
        let mut files: Vec<PathBuf> = nums.iter().map(|n| self.rotated(*n)).collect();
        if self.active.exists() {
            files.push(self.active.clone());
        }
        Ok(Ok(files))
    }
}

/// Where the chain starts after local retention removed whole files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retained {
    /// The first rotated file number kept (smaller ones are gone).
    pub first_file: u64,
    /// The seq of its first record.
    pub first_seq: u64,
}

/// The rotation numbers among directory entry `names` for log file `base`
/// (`base.1`, `base.2`, …; no leading zeros), ascending.
pub fn rotated_numbers(base: &str, names: &[String]) -> Vec<u64> {
    let prefix = format!("{base}.");
    let mut nums: Vec<u64> = names
        .iter()
        .filter_map(|n| n.strip_prefix(&prefix))
        .filter(|d| !d.is_empty() && !d.starts_with('0') && d.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|d| d.parse().ok())
        .collect();
    nums.sort_unstable();
    nums
}

/// The first number missing from `1..=max` in sorted `nums`, if any.
pub fn first_gap(nums: &[u64]) -> Option<u64> {
    nums.iter()
        .zip(1u64..)
        .find(|(n, want)| **n != *want)
        .map(|(_, want)| want)
}

/// The last whole line of `path` (None for a missing or empty file), read
/// without the writer's lock and without repairing anything (for `status`).
pub fn peek_last_line(path: &std::path::Path) -> std::io::Result<Option<Vec<u8>>> {
    match crate::fsx::open_read(path) {
        Ok(mut f) => Ok(read_tail(&mut f)?.last_line),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The end of a line file: where its whole lines end, and its last whole line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// File length.
    pub len: u64,
    /// Offset just past the last newline (0 when there is none).
    pub whole_len: u64,
    /// The last whole line, without its newline.
    pub last_line: Option<Vec<u8>>,
}

impl Tail {
    /// Bytes after the last newline (a write interrupted by a crash).
    pub fn torn_bytes(&self) -> u64 {
        self.len - self.whole_len
    }
}

/// Split the last bytes of a file (`buf` = file bytes from some offset to the
/// end; `at_start` when that offset is 0) into (end of whole lines, range of
/// the last whole line), both relative to `buf`. `None`: more bytes needed.
pub fn split_tail(buf: &[u8], at_start: bool) -> Option<(usize, Option<(usize, usize)>)> {
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        return at_start.then_some((0, None));
    };
    match buf[..last_nl].iter().rposition(|&b| b == b'\n') {
        Some(prev_nl) => Some((last_nl + 1, Some((prev_nl + 1, last_nl)))),
        None if at_start => Some((last_nl + 1, Some((0, last_nl)))),
        None => None,
    }
}

/// Read the tail of an open line file, backwards in blocks, so appending to
/// a large log costs one small read.
pub fn read_tail(f: &mut std::fs::File) -> std::io::Result<Tail> {
    let len = f.seek(SeekFrom::End(0))?;
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    let mut block = 8192u64;
    loop {
        let from = start.saturating_sub(block);
        let mut chunk = vec![0; usize::try_from(start - from).unwrap_or(0)];
        f.seek(SeekFrom::Start(from))?;
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
        start = from;
        if let Some((whole, last)) = split_tail(&buf, start == 0) {
            return Ok(Tail {
                len,
                whole_len: start + whole as u64,
                last_line: last.map(|(a, b)| buf[a..b].to_vec()),
            });
        }
        block = block.saturating_mul(2);
    }
}

/// The chain files in order with the seq of each file's first record
/// (files removed by local retention are simply absent from the front).
pub fn chain_with_first_seq(files: &LogFiles) -> anyhow::Result<Vec<(PathBuf, u64)>> {
    let from = files.retained_from()?.map_or(1, |r| r.first_file);
    let mut paths: Vec<PathBuf> = files
        .rotated_numbers()?
        .into_iter()
        .filter(|n| *n >= from)
        .map(|n| files.rotated(n))
        .collect();
    paths.push(files.active.clone());
    let mut out = Vec::new();
    for p in paths {
        let f = match crate::fsx::open_read(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("opening {}", p.display())),
        };
        let mut first = Vec::new();
        BufReader::new(f)
            .read_until(b'\n', &mut first)
            .with_context(|| format!("reading {}", p.display()))?;
        if first.last() != Some(&b'\n') {
            continue;
        }
        first.pop();
        let seq = super::record::Record::parse_canonical(&first)
            .map_err(|e| anyhow::anyhow!("{}: its first line is {e}", p.display()))?
            .seq;
        out.push((p, seq));
    }
    Ok(out)
}

/// The exact lines (each with its newline) of records `from..=to`.
pub fn read_lines(files: &LogFiles, from: u64, to: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let chain = chain_with_first_seq(files)?;
    let mut out = Vec::new();
    let mut next = from;
    for (i, (path, first)) in chain.iter().enumerate() {
        let ends_before = chain.get(i + 1).map(|(_, f)| *f);
        if ends_before.is_some_and(|e| e <= next) || *first > next {
            continue;
        }
        let f =
            crate::fsx::open_read(path).with_context(|| format!("opening {}", path.display()))?;
        let mut r = BufReader::new(f);
        let mut seq = *first;
        let mut line = Vec::new();
        while next <= to {
            line.clear();
            if r.read_until(b'\n', &mut line)
                .with_context(|| format!("reading {}", path.display()))?
                == 0
                || line.last() != Some(&b'\n')
            {
                break;
            }
            if seq == next {
                out.push(std::mem::take(&mut line));
                next += 1;
            }
            seq += 1;
        }
    }
    if next <= to {
        anyhow::bail!(
            "records {next}..={to} are not in the local log {} (removed, or rotated while read; the next pass retries)",
            files.active.display()
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_numbered_siblings_are_rotated_files() {
        let names: Vec<String> = [
            "audit.jsonl",
            "audit.jsonl.2",
            "audit.jsonl.10",
            "audit.jsonl.1",
            "audit.jsonl.checkpoints",
            "audit.jsonl.lock",
            "audit.jsonl.torn-5-17",
            "audit.jsonl.01",
            "audit.jsonl.",
            "other.jsonl.3",
            "audit.jsonl.3x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(rotated_numbers("audit.jsonl", &names), vec![1, 2, 10]);
    }

    #[test]
    fn gaps_in_rotation_numbers_are_found() {
        let cases: &[(&[u64], Option<u64>)] = &[
            (&[], None),
            (&[1], None),
            (&[1, 2, 3], None),
            (&[2, 3], Some(1)),
            (&[1, 3], Some(2)),
            (&[1, 2, 4, 5], Some(3)),
        ];
        for (nums, want) in cases {
            assert_eq!(first_gap(nums), *want, "{nums:?}");
        }
    }

    #[test]
    fn tail_split_finds_the_last_whole_line_and_the_torn_fragment() {
        type Split = Option<(usize, Option<(usize, usize)>)>;
        let cases: &[(&[u8], bool, Split)] = &[
            (b"", true, Some((0, None))),
            (b"abc", true, Some((0, None))),
            (b"abc", false, None),
            (b"a\n", true, Some((2, Some((0, 1))))),
            (b"a\n", false, None),
            (b"a\nbb\n", false, Some((5, Some((2, 4))))),
            (b"a\nbb\ncc", false, Some((5, Some((2, 4))))),
            (b"bb\ncc", true, Some((3, Some((0, 2))))),
            (b"x\n\n", false, Some((3, Some((2, 2))))),
        ];
        for (buf, at_start, want) in cases {
            assert_eq!(
                split_tail(buf, *at_start),
                *want,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[test]
    fn read_tail_crosses_block_boundaries() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let long = "y".repeat(20_000);
        let mut f = std::fs::File::create(&p).unwrap();
        write!(f, "first\n{long}\ntorn").unwrap();
        let mut f = std::fs::File::open(&p).unwrap();
        let t = read_tail(&mut f).unwrap();
        assert_eq!(t.last_line.as_deref(), Some(long.as_bytes()));
        assert_eq!(t.torn_bytes(), 4);
        assert_eq!(t.whole_len, 6 + 20_001);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn read_tail_agrees_with_splitting_the_whole_file(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![1 => proptest::strategy::Just(b'\n'), 200 => proptest::num::u8::ANY],
                0..40_000,
            )
        ) {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("f");
            std::fs::write(&p, &bytes).unwrap();
            let t = read_tail(&mut std::fs::File::open(&p).unwrap()).unwrap();
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let last = (whole > 0).then(|| {
                let body = &bytes[..whole - 1];
                let from = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                body[from..].to_vec()
            });
            proptest::prop_assert_eq!(t.len, bytes.len() as u64);
            proptest::prop_assert_eq!(t.whole_len, whole as u64);
            proptest::prop_assert_eq!(t.last_line, last);
        }
    }
}
