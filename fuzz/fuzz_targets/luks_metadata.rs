//! LUKS on-disk binary header and token JSON, as read from a device or a
//! header backup.
//!
//! Properties: no panic on any bytes; an accepted header has version 1 or 2
//! and a header id consistent with it; the same bytes with trailing data
//! appended parse identically (only the first 4096 bytes are meaningful);
//! token keyslots are exactly the entries that are decimal u32s.
#![no_main]

use cloudnx_agent::jobs::luks::ondisk::{parse_binary_header, parse_token_bytes, LUKS1_PHDR_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_binary_header(data) {
        Ok(h) => {
            assert!(data.len() >= LUKS1_PHDR_LEN);
            match h.version {
                1 => {
                    assert!(h.seqid.is_none() && h.label.is_empty());
                    assert!(h.header_id.starts_with('h') && h.header_id.len() == 17);
                }
                2 => assert_eq!(
                    Some(h.header_id.as_str()),
                    h.seqid.map(|s| s.to_string()).as_deref()
                ),
                v => panic!("accepted unknown version {v}"),
            }
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0xA5; 64]);
            assert_eq!(parse_binary_header(&longer).as_ref(), Ok(&h));
        }
        Err(_) => {}
    }

    if let Ok(t) = parse_token_bytes(data) {
        let v: serde_json::Value = serde_json::from_slice(data).expect("was JSON");
        assert!(v.is_object(), "a token is a JSON object");
        assert_eq!(
            v.get("type").and_then(|k| k.as_str()),
            Some(t.kind.as_str())
        );
        // Keyslots: exactly the entries that are u32s, as decimal strings or numbers.
        let expected: Vec<u32> = v
            .get("keyslots")
            .and_then(|k| k.as_array())
            .into_iter()
            .flatten()
            .filter_map(|k| {
                k.as_str()
                    .map(str::trim)
                    .and_then(|s| s.parse().ok())
                    .or_else(|| k.as_u64().and_then(|n| u32::try_from(n).ok()))
            })
            .collect();
        assert_eq!(t.keyslots, expected);
    }
});
