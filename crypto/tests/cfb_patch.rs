//! The patched `cfb_mode::BufDecryptor` and `BufEncryptor` (third_party/
//! cfb-mode, ADR 0016) hand whole blocks to AES's backend in one call (in
//! parallel when decrypting). Whatever pieces a message arrives in — rPGP
//! feeds it in reads of any size — the output must be what the crate's
//! whole-message `Decryptor`/`Encryptor` give, for every alignment of the
//! piece boundaries against the 16-byte blocks.

use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};

/// A message of 10 007 bytes (8 parallel blocks are 128 bytes: odd lengths
/// cross every boundary), its bytes spread by `mul`.
fn message(mul: u32) -> Vec<u8> {
    (0..10_007u32)
        .map(|i| (i.wrapping_mul(mul) >> 12) as u8)
        .collect()
}

/// `input` cut every way the tests try — pieces of 1 to 300 bytes, of 511,
/// 512, 513, 4096 and the whole, then growing pieces (1, 2, 3, … bytes) —
/// each way fed to a fresh `apply`, which must turn it into `want`.
fn in_all_pieces(
    input: &[u8],
    want: &[u8],
    what: &str,
    mut apply: impl FnMut() -> Box<dyn FnMut(&mut [u8])>,
) {
    for piece in (1..=300).chain([511, 512, 513, 4096, input.len()]) {
        let mut got = input.to_vec();
        let mut f = apply();
        for chunk in got.chunks_mut(piece) {
            f(chunk);
        }
        assert_eq!(got, want, "{what} in pieces of {piece} bytes");
    }
    let mut got = input.to_vec();
    let mut f = apply();
    let (mut at, mut n) = (0, 1);
    while at < got.len() {
        let end = (at + n).min(got.len());
        f(&mut got[at..end]);
        at = end;
        n += 1;
    }
    assert_eq!(got, want, "{what} in growing pieces");
}

#[test]
fn buf_decryptor_in_pieces_of_any_size_equals_decryptor() {
    let (key, iv) = ([0x5a; 32], [0xa5; 16]);
    let plain = message(2_654_435_761);
    let mut ct = plain.clone();
    cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .encrypt(&mut ct);
    assert_ne!(ct, plain);
    let mut reference = ct.clone();
    cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt(&mut reference);
    assert_eq!(reference, plain);
    in_all_pieces(&ct, &plain, "decrypted", || {
        let mut d = cfb_mode::BufDecryptor::<aes::Aes256>::new_from_slices(&key, &iv).unwrap();
        Box::new(move |chunk| d.decrypt(chunk))
    });
}

#[test]
fn buf_encryptor_in_pieces_of_any_size_equals_encryptor() {
    let (key, iv) = ([0x3c; 32], [0xc3; 16]);
    let plain = message(2_246_822_519);
    let mut reference = plain.clone();
    cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .encrypt(&mut reference);
    assert_ne!(reference, plain);
    in_all_pieces(&plain, &reference, "encrypted", || {
        let mut e = cfb_mode::BufEncryptor::<aes::Aes256>::new_from_slices(&key, &iv).unwrap();
        Box::new(move |chunk| e.encrypt(chunk))
    });
    // And it decrypts back.
    let mut back = reference.clone();
    cfb_mode::BufDecryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt(&mut back);
    assert_eq!(back, plain);
}
