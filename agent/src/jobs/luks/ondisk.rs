//! Pure parsers for the few LUKS facts libcryptsetup has no call for: the
//! binary header's sequence id and label, and a token's JSON. They take bytes
//! or JSON from a device or a header backup and never panic on any input (they
//! are fuzz targets).

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// LUKS binary header magic (primary copy).
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// LUKS2 secondary header magic.
const MAGIC_2ND: &[u8; 6] = b"SKUL\xba\xbe";
/// Size of the LUKS1 `phdr` (everything but the key material areas).
pub const LUKS1_PHDR_LEN: usize = 592;
/// Bytes to read from a device to parse either header kind.
pub const READ_LEN: usize = 4096;

/// What the binary header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryHeader {
    /// 1 or 2.
    pub version: u16,
    /// LUKS2 header sequence id (bumped on every metadata write); None for LUKS1.
    pub seqid: Option<u64>,
    /// LUKS2 label ("" when unset; LUKS1 has none).
    pub label: String,
    /// UUID as written in the header.
    pub uuid: String,
    /// Names this exact header: the seqid for LUKS2; for LUKS1 (which has no
    /// seqid) `h` + 16 hex digits of the SHA-256 of the 592-byte phdr, which
    /// changes whenever a keyslot is added, removed or re-keyed.
    pub header_id: String,
}

/// Why bytes are not a LUKS header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than a header needs.
    #[error("only {0} bytes, a LUKS header needs at least {LUKS1_PHDR_LEN}")]
    Short(usize),
    /// Wrong magic.
    #[error("no LUKS magic at offset 0")]
    NoMagic,
    /// A version this parser does not know.
    #[error("unknown LUKS version {0}")]
    Version(u16),
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// A NUL-terminated fixed-size string field, lossily decoded.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parse the start of a device or header backup (at least 592 bytes; 4096 for LUKS2).
pub fn parse_binary_header(b: &[u8]) -> Result<BinaryHeader, HeaderError> {
    if b.len() < LUKS1_PHDR_LEN {
        return Err(HeaderError::Short(b.len()));
    }
    let magic = &b[..6];
    if magic != MAGIC && magic != MAGIC_2ND {
        return Err(HeaderError::NoMagic);
    }
    match be_u16(b, 6) {
        1 => {
            let digest = Sha256::digest(&b[..LUKS1_PHDR_LEN]);
            Ok(BinaryHeader {
                version: 1,
                seqid: None,
                label: String::new(),
                uuid: cstr(&b[168..208]),
                header_id: format!("h{}", &hex::encode(digest)[..16]),
            })
        }
        2 => {
            // LUKS2 binary header: magic, version u16, hdr_size u64, seqid u64,
            // label[48] at 24, …, uuid[40] at 168 — all within the first 512 bytes.
            let seqid = be_u64(b, 16);
            Ok(BinaryHeader {
                version: 2,
                seqid: Some(seqid),
                label: cstr(&b[24..72]),
                uuid: cstr(&b[168..208]),
                header_id: seqid.to_string(),
            })
        }
        v => Err(HeaderError::Version(v)),
    }
}

/// The parts of a LUKS2 token's JSON the policy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenJson {
    /// `type`, e.g. `clevis`, `systemd-tpm2`.
    pub kind: String,
    /// Keyslots the token unlocks (entries that are not numbers are dropped).
    pub keyslots: Vec<u32>,
}

#[derive(Deserialize)]
struct RawToken {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    keyslots: Vec<serde_json::Value>,
}

/// Parse a token's JSON (libcryptsetup's `crypt_token_json_get`). LUKS2 writes
/// keyslot references as decimal strings; numbers are accepted too.
pub fn parse_token(v: &serde_json::Value) -> Result<TokenJson, String> {
    // serde would also read a struct from a positional array (`["clevis", ["1"]]`);
    // libcryptsetup only ever hands out objects, so anything else is not a token.
    if !v.is_object() {
        return Err("token JSON: not an object".into());
    }
    let raw = RawToken::deserialize(v).map_err(|e| format!("token JSON: {e}"))?;
    let keyslots = raw
        .keyslots
        .iter()
        .filter_map(|k| match k {
            serde_json::Value::String(s) => s.trim().parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        })
        .collect();
    Ok(TokenJson {
        kind: raw.kind,
        keyslots,
    })
}

/// [`parse_token`] from bytes (the fuzzing entry point).
pub fn parse_token_bytes(b: &[u8]) -> Result<TokenJson, String> {
    let v: serde_json::Value = serde_json::from_slice(b).map_err(|e| format!("token JSON: {e}"))?;
    parse_token(&v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luks2(seqid: u64, label: &str) -> Vec<u8> {
        let mut b = vec![0u8; READ_LEN];
        b[..6].copy_from_slice(MAGIC);
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        b[16..24].copy_from_slice(&seqid.to_be_bytes());
        b[24..24 + label.len()].copy_from_slice(label.as_bytes());
        b[168..168 + 36].copy_from_slice(b"0b5d2c1e-6a3f-4c1b-9d7e-2f8a9b0c1d2e");
        b
    }

    #[test]
    fn luks2_seqid_label_and_uuid_are_read() {
        let h = parse_binary_header(&luks2(7, "vmdata")).unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.seqid, Some(7));
        assert_eq!(h.header_id, "7");
        assert_eq!(h.label, "vmdata");
        assert_eq!(h.uuid, "0b5d2c1e-6a3f-4c1b-9d7e-2f8a9b0c1d2e");
    }

    #[test]
    fn luks1_header_id_changes_with_the_keyslot_area() {
        let mut b = vec![0u8; LUKS1_PHDR_LEN];
        b[..6].copy_from_slice(MAGIC);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        let a = parse_binary_header(&b).unwrap();
        b[208] = 0xAC; // first keyslot's "active" word
        let c = parse_binary_header(&b).unwrap();
        assert_eq!(a.seqid, None);
        assert!(a.header_id.starts_with('h') && a.header_id.len() == 17);
        assert_ne!(a.header_id, c.header_id);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let table: &[(&[u8], HeaderError)] = &[
            (b"", HeaderError::Short(0)),
            (&[0u8; 600], HeaderError::NoMagic),
        ];
        for (input, want) in table {
            assert_eq!(parse_binary_header(input).unwrap_err(), *want);
        }
        let mut v = luks2(1, "");
        v[6..8].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            parse_binary_header(&v).unwrap_err(),
            HeaderError::Version(9)
        );
    }

    /// (input, Ok((type, keyslots)) or Err(()) for "refused").
    type TokenCase = (&'static str, Result<(&'static str, Vec<u32>), ()>);

    #[test]
    fn token_json_that_is_not_an_object_is_refused() {
        // Found by the luks_metadata fuzz target: a positional array used to
        // parse as a token of type "" bound to keyslot 8.
        assert!(parse_token_bytes(b"[ \"\",[\t\t\t8]]").is_err());
        assert!(parse_token_bytes(b"[\"clevis\",[\"1\"]]").is_err());
        assert!(parse_token_bytes(b"\"clevis\"").is_err());
    }

    #[test]
    fn token_json_keyslots_parse_leniently() {
        let table: &[TokenCase] = &[
            (
                r#"{"type":"clevis","keyslots":["1"]}"#,
                Ok(("clevis", vec![1])),
            ),
            (
                r#"{"type":"systemd-tpm2","keyslots":[2,"x",{"a":1}," 3"]}"#,
                Ok(("systemd-tpm2", vec![2, 3])),
            ),
            (r#"{"type":"clevis"}"#, Ok(("clevis", vec![]))),
            (r#"{"keyslots":["1"]}"#, Err(())),
            (r#"{"type":5}"#, Err(())),
            (r#"[1,2]"#, Err(())),
            ("not json", Err(())),
        ];
        for (input, want) in table {
            let got = parse_token_bytes(input.as_bytes());
            match want {
                Ok((kind, slots)) => {
                    let t = got.unwrap_or_else(|e| panic!("{input}: {e}"));
                    assert_eq!((t.kind.as_str(), &t.keyslots), (*kind, slots), "{input}");
                }
                Err(()) => assert!(got.is_err(), "{input} should be refused"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..5000)) {
            let _ = parse_binary_header(&b);
            let _ = parse_token_bytes(&b);
            let _ = super::super::live::parse_mountinfo(&String::from_utf8_lossy(&b));
        }

        #[test]
        fn luks_magic_with_any_tail_never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            let mut b = MAGIC.to_vec();
            b.extend(tail);
            let _ = parse_binary_header(&b);
        }
    }
}
