//! The patched `cfb_mode::BufDecryptor` and `BufEncryptor` (third_party/
//! cfb-mode, ADR 0016) hand whole blocks to AES's backend in one call (in
//! parallel when decrypting). Whatever pieces a message arrives in — rPGP
//! feeds it in reads of any size — the output must be what the crate's
//! whole-message `Decryptor`/`Encryptor` give, for every alignment of the
//! piece boundaries against the 16-byte blocks.

use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};

#[test]
fn buf_decryptor_in_pieces_of_any_size_equals_decryptor() {
    let key = [0x5a; 32];
    let iv = [0xa5; 16];
    // 8 parallel blocks are 128 bytes: odd lengths cross every boundary.
    let plain: Vec<u8> = (0..10_007u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut ct = plain.clone();
    cfb_mode::BufEncryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .encrypt(&mut ct);
    assert_ne!(ct, plain);
    let mut reference = ct.clone();
    cfb_mode::Decryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt(&mut reference);
    assert_eq!(reference, plain);
    for piece in (1..=300).chain([511, 512, 513, 4096, 10_007]) {
        let mut got = ct.clone();
        let mut d = cfb_mode::BufDecryptor::<aes::Aes256>::new_from_slices(&key, &iv).unwrap();
        for chunk in got.chunks_mut(piece) {
            d.decrypt(chunk);
        }
        assert_eq!(got, plain, "decrypted in pieces of {piece} bytes");
    }
    // Uneven pieces too: 1, 2, 3, … bytes, then the rest.
    let mut got = ct.clone();
    let mut d = cfb_mode::BufDecryptor::<aes::Aes256>::new_from_slices(&key, &iv).unwrap();
    let (mut at, mut n) = (0, 1);
    while at < got.len() {
        let end = (at + n).min(got.len());
        d.decrypt(&mut got[at..end]);
        at = end;
        n += 1;
    }
    assert_eq!(got, plain, "decrypted in growing pieces");
}

#[test]
fn buf_encryptor_in_pieces_of_any_size_equals_encryptor() {
    let key = [0x3c; 32];
    let iv = [0xc3; 16];
    let plain: Vec<u8> = (0..10_007u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    let mut reference = plain.clone();
    cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .encrypt(&mut reference);
    assert_ne!(reference, plain);
    for piece in (1..=300).chain([511, 512, 513, 4096, 10_007]) {
        let mut got = plain.clone();
        let mut e = cfb_mode::BufEncryptor::<aes::Aes256>::new_from_slices(&key, &iv).unwrap();
        for chunk in got.chunks_mut(piece) {
            e.encrypt(chunk);
        }
        assert_eq!(got, reference, "encrypted in pieces of {piece} bytes");
    }
    // And it decrypts back.
    let mut back = reference.clone();
    cfb_mode::BufDecryptor::<aes::Aes256>::new_from_slices(&key, &iv)
        .unwrap()
        .decrypt(&mut back);
    assert_eq!(back, plain);
}
