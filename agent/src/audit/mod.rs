//! The tamper-evident audit log (SPEC §7): one JSON object per line, each
//! carrying the SHA-256 of the previous line's exact bytes; the head sealed
//! every few minutes by an Ed25519-signed checkpoint that is also sent off
//! the host; and `audit verify`, which names the first bad `seq`.
//!
//! Owns: the file format ([`record`]), where the files live and how rotation
//! names them ([`files`]), appending with one writer at a time across
//! processes ([`log`]), the signing key ([`key`]), checkpoints
//! ([`checkpoint`]) and verification ([`verify`]).
//! Never: decides what is audited — the runner and the API hand records here;
//! never rewrites a whole record (a torn tail is moved aside, never dropped).
//! The copy off the host ([`offhost`], SPEC §11) writes through `store`'s
//! `Destination` trait, opened by the caller.
//! A leaf: it imports only `fsx`, `util` and `store` (paths, keys and
//! destinations come as parameters).

pub mod checkpoint;
pub mod files;
pub mod key;
pub mod log;
pub mod offhost;
pub mod pkcs11;
pub mod record;
pub mod retention;
pub mod verify;

pub use log::{AuditLog, TornTail};
pub use record::{sha256_hex, AuditEntry, Head, Record, GENESIS};
