//! The drill's decryption streams: plaintext comes out while the message is
//! still arriving, so memory does not grow with the backup (rPGP's default
//! for SEIPD v1 reads the whole message first and refuses more than 1 GB),
//! and an altered message still fails at its end (MDC).

mod support;

use std::io::{BufReader, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use support::gpg::Gpg;
use support::Scratch;

/// Serves `data`; when it is about to hand out the last `tail` bytes, records
/// how much plaintext the writer had already received.
#[derive(Debug)]
struct Source {
    data: Vec<u8>,
    pos: usize,
    tail: usize,
    written: Arc<AtomicU64>,
    written_before_tail: Option<u64>,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos + self.tail >= self.data.len() && self.written_before_tail.is_none() {
            self.written_before_tail = Some(self.written.load(Ordering::SeqCst));
        }
        let n = buf.len().min(self.data.len() - self.pos).min(64 * 1024);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Sink {
    written: Arc<AtomicU64>,
    out: Vec<u8>,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(b);
        self.written.fetch_add(b.len() as u64, Ordering::SeqCst);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn plaintext() -> Vec<u8> {
    // 24 MiB that does not compress to nothing.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

fn decrypt(key: &std::path::Path, msg: Vec<u8>) -> (anyhow::Result<u64>, Vec<u8>, Option<u64>) {
    let written = Arc::new(AtomicU64::new(0));
    let mut src = BufReader::new(Source {
        data: msg,
        pos: 0,
        tail: 1 << 20,
        written: written.clone(),
        written_before_tail: None,
    });
    let mut sink = Sink {
        written,
        out: Vec::new(),
    };
    let r = cloudnx_agent::crypto::decrypt(key, &mut src, &mut sink);
    (r, sink.out, src.get_ref().written_before_tail)
}

#[test]
fn decryption_releases_plaintext_before_the_whole_message_arrived_and_still_checks_the_mdc() {
    let s = Scratch::new();
    let g = Gpg::new();
    std::fs::create_dir_all(s.path("keys")).unwrap();
    let public = g.export_public(&s.path("keys/pub.asc"));
    let secret = g.export_secret(&s.path("keys/sec.asc"));
    let plain = plaintext();
    let rcpt = cloudnx_agent::crypto::Recipients::load(&[public]).unwrap();
    let mut msg = Vec::new();
    rcpt.encrypt(&mut &plain[..], &mut msg).unwrap();

    let (r, out, before_tail) = decrypt(&secret, msg.clone());
    assert_eq!(r.unwrap(), plain.len() as u64);
    assert!(out == plain, "decrypted bytes differ");
    let before_tail = before_tail.expect("the source was read to its last MiB");
    assert!(
        before_tail >= (plain.len() as u64) / 2,
        "only {before_tail} of {} plaintext bytes were released before the last MiB of the message was read: decryption is not streaming",
        plain.len()
    );

    // One flipped byte near the end: the MDC fails, after plaintext was released.
    let mut bad = msg;
    let at = bad.len() - 100;
    bad[at] ^= 0x01;
    let (r, _, _) = decrypt(&secret, bad);
    let e = format!(
        "{:#}",
        r.expect_err("an altered message must not decrypt cleanly")
    );
    assert!(e.contains("decrypting"), "{e}");
}
