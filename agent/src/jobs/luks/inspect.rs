//! Every libcryptsetup call of the process, on ONE dedicated thread.
//!
//! libcryptsetup handles are `!Send` and libcryptsetup-rs refuses use from a
//! second thread, so a single long-lived worker owns every `CryptDevice`; async
//! code hands it closures over a channel and awaits the answer. The worker
//! survives a panic inside a call (it is caught and returned as an error).

use super::ondisk::{parse_binary_header, parse_token, BinaryHeader, READ_LEN};
use libcryptsetup_rs::consts::flags::CryptActivate;
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat, KeyslotInfo};
use libcryptsetup_rs::{CryptDevice, CryptInit, CryptKeyslotHandle, CryptTokenInfo, LibcryptErr};
use serde::Serialize;
use std::cell::RefCell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, OnceLock};

type Task = Box<dyn FnOnce() + Send>;

static WORKER: OnceLock<Mutex<mpsc::Sender<Task>>> = OnceLock::new();

thread_local! {
    /// libcryptsetup's own error lines of the current call (it logs the cause,
    /// e.g. "Device x is not a valid LUKS device.", and returns only an errno).
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn on_log(level: libcryptsetup_rs::consts::vals::CryptLogLevel, msg: &str, _data: Option<&mut ()>) {
    use libcryptsetup_rs::consts::vals::CryptLogLevel;
    if matches!(level, CryptLogLevel::Error | CryptLogLevel::Normal) && !msg.is_empty() {
        LOG.with(|l| l.borrow_mut().push(msg.to_owned()));
    }
    tracing::debug!(target: "libcryptsetup", "{msg}");
}

libcryptsetup_rs::c_logging_callback!(log_callback, (), on_log);

fn sender() -> mpsc::Sender<Task> {
    let m = WORKER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name("libcryptsetup".into())
            .spawn(move || {
                // Route libcryptsetup's messages into our errors instead of stderr.
                libcryptsetup_rs::set_log_callback::<()>(Some(log_callback), None);
                for task in rx {
                    task();
                }
            })
            .expect("spawning the libcryptsetup thread");
        Mutex::new(tx)
    });
    m.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Run `f` on the libcryptsetup thread and await its result.
pub async fn on_worker<T, F>(f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task: Task = Box::new(move || {
        LOG.with(|l| l.borrow_mut().clear());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("libcryptsetup call panicked")));
        let _ = tx.send(r);
    });
    sender()
        .send(task)
        .map_err(|_| anyhow::anyhow!("the libcryptsetup thread is gone"))?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the libcryptsetup thread dropped the call"))?
}

/// A libcryptsetup failure with what libcryptsetup logged about it.
fn lc_err(step: &str, e: LibcryptErr) -> anyhow::Error {
    let logged = LOG.with(|l| l.borrow().join("; "));
    if logged.is_empty() {
        anyhow::anyhow!("{step}: {e}")
    } else {
        anyhow::anyhow!("{step}: {e} ({logged})")
    }
}

fn errno(e: &LibcryptErr) -> Option<i32> {
    match e {
        LibcryptErr::IOError(io) => io.raw_os_error(),
        _ => None,
    }
}

/// One keyslot's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Holds the volume key.
    Active,
    /// Holds some other key (LUKS2 `--unbound`): opens nothing, stores a secret.
    Unbound,
}

/// The PBKDF of a keyslot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Pbkdf {
    /// `pbkdf2`, `argon2i` or `argon2id`.
    pub kind: String,
    /// Hash (PBKDF2 only).
    pub hash: Option<String>,
    /// Iterations (time cost for Argon2).
    pub iterations: u32,
    /// Memory cost in KiB (Argon2).
    pub memory_kb: u32,
    /// Parallel threads (Argon2).
    pub threads: u32,
}

/// An in-use keyslot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Keyslot {
    /// Slot number.
    pub slot: u32,
    /// Active or unbound.
    pub state: SlotState,
    /// How the passphrase is stretched.
    pub pbkdf: Option<Pbkdf>,
}

/// A LUKS2 token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Token {
    /// Token id.
    pub id: u32,
    /// `clevis`, `systemd-tpm2`, `luks2-keyring`, …
    pub kind: String,
    /// Keyslots it unlocks.
    pub keyslots: Vec<u32>,
}

/// Everything the policy looks at in a LUKS header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Inspection {
    /// 1 or 2.
    pub luks_version: u8,
    /// UUID (with dashes).
    pub uuid: String,
    /// LUKS2 label.
    pub label: String,
    /// Cipher, e.g. `aes`.
    pub cipher: String,
    /// Mode, e.g. `xts-plain64`.
    pub cipher_mode: String,
    /// Volume key size in bits.
    pub key_bits: u32,
    /// LUKS2 sequence id.
    pub seqid: Option<u64>,
    /// Names this header version (see [`BinaryHeader::header_id`]).
    pub header_id: String,
    /// In-use keyslots.
    pub keyslots: Vec<Keyslot>,
    /// Tokens.
    pub tokens: Vec<Token>,
}

/// What is at a configured device path (serialised as the helper's `inspect` answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum HeaderState {
    /// Nothing at that path.
    Missing(String),
    /// Something without a LUKS header.
    NotLuks(String),
    /// Something that could not be read (permissions, I/O error).
    Unreadable(String),
    /// A LUKS header.
    Luks(Box<Inspection>),
}

pub(crate) fn read_binary_header(path: &Path) -> anyhow::Result<BinaryHeader> {
    let mut buf = Vec::with_capacity(READ_LEN);
    std::fs::File::open(path)
        .and_then(|f| f.take(READ_LEN as u64).read_to_end(&mut buf))
        .map_err(|e| {
            anyhow::anyhow!("reading the LUKS binary header of {}: {e}", path.display())
        })?;
    parse_binary_header(&buf)
        .map_err(|e| anyhow::anyhow!("parsing the LUKS binary header of {}: {e}", path.display()))
}

fn load(device: &Path) -> anyhow::Result<Result<CryptDevice, String>> {
    let mut dev = CryptInit::init(device).map_err(|e| {
        lc_err(
            &format!("opening {} with libcryptsetup", device.display()),
            e,
        )
    })?;
    match dev.context_handle().load::<()>(None, None) {
        Ok(()) => Ok(Ok(dev)),
        // EINVAL: no (known) LUKS header at all.
        Err(e) if errno(&e) == Some(libc::EINVAL) => Ok(Err(LOG.with(|l| l.borrow().join("; ")))),
        Err(e) => Err(lc_err(
            &format!("loading the LUKS header of {}", device.display()),
            e,
        )),
    }
}

fn kdf_name(k: &CryptKdf) -> &'static str {
    match k {
        CryptKdf::Pbkdf2 => "pbkdf2",
        CryptKdf::Argon2I => "argon2i",
        CryptKdf::Argon2Id => "argon2id",
    }
}

fn inspect_blocking(device: &Path) -> anyhow::Result<HeaderState> {
    match std::fs::metadata(device) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HeaderState::Missing(format!(
                "{} does not exist",
                device.display()
            )))
        }
        Err(e) => anyhow::bail!("inspecting {}: {e}", device.display()),
        Ok(_) => {}
    }
    let mut dev = match load(device)? {
        Ok(d) => d,
        Err(why) => {
            let why = if why.is_empty() {
                "no LUKS header".into()
            } else {
                why
            };
            return Ok(HeaderState::NotLuks(format!("{}: {why}", device.display())));
        }
    };
    let fmt = dev
        .format_handle()
        .get_type()
        .map_err(|e| lc_err("reading the header type", e))?;
    let luks_version = match fmt {
        EncryptionFormat::Luks1 => 1,
        EncryptionFormat::Luks2 => 2,
        _ => {
            return Ok(HeaderState::NotLuks(format!(
                "{}: not a LUKS header",
                device.display()
            )))
        }
    };
    let mut st = dev.status_handle();
    let cipher = st
        .get_cipher()
        .map_err(|e| lc_err("reading the cipher", e))?;
    let cipher_mode = st
        .get_cipher_mode()
        .map_err(|e| lc_err("reading the cipher mode", e))?;
    let key_bits = u32::try_from(st.get_volume_key_size()).unwrap_or(0) * 8;
    let uuid = st
        .get_uuid()
        .map_err(|e| lc_err("reading the UUID", e))?
        .to_string();
    let bin = read_binary_header(device)?;

    let max = CryptKeyslotHandle::max_keyslots(fmt).map_err(|e| lc_err("counting keyslots", e))?;
    let mut keyslots = Vec::new();
    for slot in 0..max {
        let state = match dev.keyslot_handle().status(slot) {
            Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast) => SlotState::Active,
            Ok(KeyslotInfo::Unbound) => SlotState::Unbound,
            Ok(_) => continue,
            Err(e) => return Err(lc_err(&format!("reading keyslot {slot}"), e)),
        };
        let pbkdf = dev.keyslot_handle().get_pbkdf(slot).ok().map(|p| Pbkdf {
            kind: kdf_name(&p.type_).into(),
            hash: p.hash,
            iterations: p.iterations,
            memory_kb: p.max_memory_kb,
            threads: p.parallel_threads,
        });
        keyslots.push(Keyslot { slot, state, pbkdf });
    }
    let mut tokens = Vec::new();
    if luks_version == 2 {
        // LUKS2 has 32 token slots (crypt_token_max("LUKS2")).
        for id in 0..32 {
            let kind = match dev.token_handle().status(id) {
                Ok(
                    CryptTokenInfo::Internal(k)
                    | CryptTokenInfo::InternalUnknown(k)
                    | CryptTokenInfo::External(k)
                    | CryptTokenInfo::ExternalUnknown(k),
                ) => k,
                _ => continue,
            };
            let keyslots = match dev.token_handle().json_get(id) {
                Ok(v) => parse_token(&v).map(|t| t.keyslots).unwrap_or_default(),
                Err(_) => vec![],
            };
            tokens.push(Token { id, kind, keyslots });
        }
    }
    Ok(HeaderState::Luks(Box::new(Inspection {
        luks_version,
        uuid,
        label: bin.label,
        cipher,
        cipher_mode,
        key_bits,
        seqid: bin.seqid,
        header_id: bin.header_id,
        keyslots,
        tokens,
    })))
}

/// Read the header at `device` (never writes).
pub async fn inspect(device: PathBuf) -> anyhow::Result<HeaderState> {
    on_worker(move || inspect_blocking(&device)).await
}

/// Write libcryptsetup's header backup of `device` to `dest` (which must not exist)
/// and return the binary header of what was written.
pub async fn header_backup(device: PathBuf, dest: PathBuf) -> anyhow::Result<BinaryHeader> {
    on_worker(move || {
        let mut dev = match load(&device)? {
            Ok(d) => d,
            Err(why) => anyhow::bail!("{} has no LUKS header to back up: {why}", device.display()),
        };
        dev.backup_handle()
            .header_backup(None, &dest)
            .map_err(|e| {
                lc_err(
                    &format!(
                        "backing up the header of {} to {}",
                        device.display(),
                        dest.display()
                    ),
                    e,
                )
            })?;
        read_binary_header(&dest)
    })
    .await
}

/// Activate the dm-crypt mapping `name` for `device` with the key in `keyfile`
/// (libcryptsetup reads the file itself; the key never passes through us).
pub async fn open(device: PathBuf, name: String, keyfile: PathBuf) -> anyhow::Result<()> {
    on_worker(move || {
        let mut dev = match load(&device)? {
            Ok(d) => d,
            Err(why) => anyhow::bail!("{} has no LUKS header: {why}", device.display()),
        };
        dev.activate_handle()
            .activate_by_keyfile_device_offset(
                Some(&name),
                None,
                &keyfile,
                None,
                0,
                CryptActivate::empty(),
            )
            .map_err(|e| {
                lc_err(
                    &format!(
                        "activating {name} from {} with {}",
                        device.display(),
                        keyfile.display()
                    ),
                    e,
                )
            })?;
        Ok(())
    })
    .await
}
