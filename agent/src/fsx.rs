//! File-system safety: the one place that creates, replaces, locks and syncs
//! the agent's own files. A leaf: it imports nothing of the agent but `util`.
//!
//! Every file is opened without following a symlink in its last component
//! (`O_NOFOLLOW`), new files are created exclusively (`O_EXCL`) with their
//! mode set on the descriptor that created them (the umask never widens or
//! narrows it), and replacement is temp-in-the-same-directory + fsync +
//! rename + fsync of the directory. So a planted symlink in a directory that
//! someone else can write (node_exporter's textfile directory, a spool under
//! `/var/tmp`) is refused instead of redirecting a write, and a crash leaves
//! the old file or the new one, never a torn one.

use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `O_NOFOLLOW | O_CLOEXEC`: the flags every open here adds.
const SAFE: i32 = libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Create `dir` and its missing parents with mode 0700 (an existing directory
/// is left as it is).
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// The directory that holds `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// fsync a directory, so an entry created, renamed or removed in it survives a crash.
pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Create a new file exclusively (never an existing file, never through a
/// symlink) with exactly `mode`, for writing.
pub fn create_new(path: &Path, mode: u32) -> anyhow::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(SAFE)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(f)
}

/// Open (creating with `mode` if absent) a file for appending and reading,
/// refusing a symlink. Whether it was created is returned, so the caller can
/// sync the directory for a new entry.
pub fn open_append(path: &Path, mode: u32) -> anyhow::Result<(File, bool)> {
    match OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(SAFE)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
            Ok((f, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let f = OpenOptions::new()
                .read(true)
                .append(true)
                .custom_flags(SAFE)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            Ok((f, false))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// Open an existing file for reading without following a symlink.
pub fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(SAFE).open(path)
}

/// A duty's small JSON memory (`state_dir/<duty>/….json`): its value, or the
/// default when the file is absent, a link, or unreadable — a lost memory only
/// makes a duty report something as new or restart a clock.
pub fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(path: &Path) -> T {
    open_read(path)
        .ok()
        .and_then(|f| serde_json::from_reader(std::io::BufReader::new(f)).ok())
        .unwrap_or_default()
}

/// Replace a duty's JSON memory atomically: its directory 0700, the file 0600.
pub fn write_json_private<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    ensure_private_dir(parent_of(path))?;
    write_atomic(path, &serde_json::to_vec_pretty(value)?, 0o600)
}

/// The users a secret file may belong to: root, and the user the agent runs
/// as — the effective user, or for a root run the owner of `state_dir`,
/// since a root CLI run becomes that user (`cli::act_as_state_owner`) and
/// the root LUKS helper serves it. So the daemon (`cloudnx-agent`), a root
/// `check-config` and the helper accept the same files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners {
    /// The agent's user (0 when that is root).
    pub agent: u32,
}

impl Owners {
    /// The owners allowed when the configuration names `state_dir`.
    pub fn for_state_dir(state_dir: &Path) -> Owners {
        let euid = nix::unistd::geteuid().as_raw();
        let agent = if euid == 0 {
            std::fs::metadata(state_dir).map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
        } else {
            euid
        };
        Owners { agent }
    }

    /// Whether `uid` may own a secret.
    pub fn allows(self, uid: u32) -> bool {
        uid == 0 || uid == self.agent
    }
}

/// `name (uid N)`, or `uid N` for a uid without a name.
fn user(uid: u32) -> (String, String) {
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    match name {
        Some(n) => (format!("{n} (uid {uid})"), n),
        None => (format!("uid {uid}"), uid.to_string()),
    }
}

/// Why a secret file is unacceptable, if it is: (message, hint). Never reads
/// the content. `owners`: who may own it (None: not checked).
pub fn secret_file_problem(
    path: &Path,
    may_be_absent: bool,
    owners: Option<Owners>,
) -> Option<(String, String)> {
    let p = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_absent => None,
        Err(e) => Some((
            format!("secret file {p} cannot be read: {e}"),
            format!("create it readable by the agent only: install -m 0600 /dev/null {p} and write the secret into it"),
        )),
        Ok(m) if std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o077 != 0 => Some((
            format!("secret file {p} is accessible by group or other (mode {:04o})", std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777),
            format!("chmod 0600 {p}"),
        )),
        Ok(m) if !m.is_file() => Some((format!("secret {p} is not a regular file"), "point the key at a file".into())),
        Ok(m) => match owners {
            Some(o) if !o.allows(std::os::unix::fs::MetadataExt::uid(&m)) => {
                let (owner, _) = user(std::os::unix::fs::MetadataExt::uid(&m));
                let (agent, agent_name) = user(o.agent);
                let (who, fix) = if o.agent == 0 {
                    ("root, the user the agent runs as".to_owned(), format!("chown root {p}"))
                } else {
                    (
                        format!("root or {agent}, the user the agent runs as"),
                        format!("chown {agent_name} {p} (or chown root {p})"),
                    )
                };
                Some((
                    format!("secret file {p} belongs to {owner}, not to {who}: that user could read or replace it"),
                    fix,
                ))
            }
            _ => None,
        },
    }
}

/// Why files under `dir` could be tampered with by another local user, if
/// they could: `dir` (symlinks resolved) or one of its ancestors is owned by
/// someone other than root and `uid`, or is writable by group or other
/// without the sticky bit (in a sticky directory such as `/var/tmp` nobody
/// can rename or remove another user's entries). None when `dir` is safe to
/// work in by path name.
pub fn untrusted_dir(dir: &Path, uid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let real = match std::fs::canonicalize(dir) {
        Ok(r) => r,
        Err(e) => return Some(format!("{}: {e}", dir.display())),
    };
    for a in real.ancestors() {
        let m = match std::fs::metadata(a) {
            Ok(m) => m,
            Err(e) => return Some(format!("{}: {e}", a.display())),
        };
        if m.uid() != 0 && m.uid() != uid {
            return Some(format!(
                "{} belongs to uid {}, neither root nor this agent (uid {uid})",
                a.display(),
                m.uid()
            ));
        }
        if m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0 {
            return Some(format!(
                "{} is writable by group or other (mode {:04o}) without the sticky bit",
                a.display(),
                m.mode() & 0o7777
            ));
        }
    }
    None
}

/// A directory held open. Every name below it is resolved one component at a
/// time with `openat(O_NOFOLLOW)`, so a symlink planted anywhere under it
/// (by whoever else may write there) is refused, never followed, and the
/// directory cannot be swapped for another by a rename of its path while it
/// is in use. Only the directory itself is opened by path (a configured
/// root may be a symlink the operator made).
#[derive(Debug)]
pub struct Dir {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

fn errno(e: nix::errno::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// One name, never a path: no `/`, not empty, not `.` or `..`.
fn one_name(name: &str) -> std::io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single file name"),
        ));
    }
    Ok(name)
}

impl Dir {
    /// Open the directory at `path`.
    pub fn open(path: &Path) -> std::io::Result<Dir> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir {
            fd,
            path: path.to_owned(),
        })
    }

    /// Where it is (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The subdirectory `name` (never through a symlink).
    pub fn open_dir(&self, name: &str) -> std::io::Result<Dir> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::openat(
            &self.fd,
            one_name(name)?,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Create the subdirectory `name` with `mode`; false when it existed.
    pub fn mkdir(&self, name: &str, mode: u32) -> std::io::Result<bool> {
        match nix::sys::stat::mkdirat(
            &self.fd,
            one_name(name)?,
            nix::sys::stat::Mode::from_bits_truncate(mode),
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EEXIST) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }

    /// Walk down `names`, creating missing directories with `mode` when given.
    pub fn walk(&self, names: &[&str], create: Option<u32>) -> std::io::Result<Dir> {
        let mut d = self.open_dir_self()?;
        for n in names {
            if let Some(mode) = create {
                d.mkdir(n, mode)?;
            }
            d = d.open_dir(n)?;
        }
        Ok(d)
    }

    fn open_dir_self(&self) -> std::io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// Create the file `name` exclusively (never through a symlink) with
    /// exactly `mode`, for writing.
    pub fn create_new(&self, name: &str, mode: u32) -> std::io::Result<File> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::openat(
            &self.fd,
            one_name(name)?,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(mode),
        )
        .map_err(errno)?;
        let f = File::from(fd);
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        Ok(f)
    }

    /// Open the file `name` for reading (never through a symlink).
    pub fn open_file(&self, name: &str) -> std::io::Result<File> {
        use nix::fcntl::OFlag;
        let fd = nix::fcntl::openat(
            &self.fd,
            one_name(name)?,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// What `name` is, without following a symlink; None when absent.
    pub fn stat(&self, name: &str) -> std::io::Result<Option<nix::sys::stat::FileStat>> {
        match nix::sys::stat::fstatat(
            &self.fd,
            one_name(name)?,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some(st)),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// Rename `from` to `to` within this directory (replacing `to`).
    pub fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        nix::fcntl::renameat(&self.fd, one_name(from)?, &self.fd, one_name(to)?).map_err(errno)
    }

    /// Remove the file (or symlink) `name`; false when it was absent.
    pub fn remove_file(&self, name: &str) -> std::io::Result<bool> {
        match nix::unistd::unlinkat(
            &self.fd,
            one_name(name)?,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }

    /// Remove the empty subdirectory `name`.
    pub fn remove_dir(&self, name: &str) -> std::io::Result<()> {
        nix::unistd::unlinkat(
            &self.fd,
            one_name(name)?,
            nix::unistd::UnlinkatFlags::RemoveDir,
        )
        .map_err(errno)
    }

    /// The entries (without `.` and `..`): name and whether each is a
    /// directory, a regular file or something else (a symlink is "other").
    pub fn entries(&self) -> std::io::Result<Vec<(String, Entry)>> {
        let mut dir = nix::dir::Dir::from_fd(self.fd.try_clone()?).map_err(errno)?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(errno)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match self.stat(&name)? {
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Entry::Dir,
                Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                    Entry::File(u64::try_from(st.st_size).unwrap_or(0))
                }
                Some(_) => Entry::Other,
                None => continue,
            };
            out.push((name, kind));
        }
        out.sort();
        Ok(out)
    }

    /// fsync the directory (entries created, renamed or removed in it survive a crash).
    pub fn sync(&self) -> std::io::Result<()> {
        nix::unistd::fsync(&self.fd).map_err(errno)
    }
}

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file of this size.
    File(u64),
    /// A symlink, device, socket, fifo: never followed or read.
    Other,
}

/// A temp file beside its destination that is removed unless committed.
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
}

impl Staged {
    /// A new hidden temp file in `dest`'s directory (random name, exclusive,
    /// `mode`). Hidden and without the destination's suffix, so a reader of
    /// the directory (node_exporter reads `*.prom`) never sees it.
    pub fn new(dest: &Path, mode: u32) -> anyhow::Result<Staged> {
        let name = dest
            .file_name()
            .with_context(|| format!("{} has no file name", dest.display()))?;
        let tmp = parent_of(dest).join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            &crate::util::new_id()[..12]
        ));
        let file = create_new(&tmp, mode)?;
        Ok(Staged {
            tmp,
            dest: dest.to_owned(),
            file: Some(file),
        })
    }

    /// The open temp file.
    pub fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .expect("a staged file is open until committed")
    }

    /// A second handle on the temp file (for a writer that takes ownership).
    pub fn file_handle(&mut self) -> anyhow::Result<File> {
        self.file()
            .try_clone()
            .with_context(|| format!("duplicating the handle of {}", self.tmp.display()))
    }

    /// Like [`Staged::commit`], but never over an existing file: the temp
    /// file is linked to the destination (which fails if it exists) and then
    /// removed.
    pub fn commit_new(mut self) -> anyhow::Result<()> {
        let f = self.file.take().expect("committed once");
        f.sync_all()
            .with_context(|| format!("fsync of {}", self.tmp.display()))?;
        drop(f);
        std::fs::hard_link(&self.tmp, &self.dest)
            .with_context(|| format!("creating {}", self.dest.display()))?;
        let _ = std::fs::remove_file(&self.tmp);
        self.tmp = PathBuf::new();
        sync_dir(parent_of(&self.dest))
    }

    /// Where the temp file is (for messages).
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// fsync, rename over the destination (replacing a symlink there, never
    /// following it), fsync the directory.
    pub fn commit(mut self) -> anyhow::Result<()> {
        let f = self.file.take().expect("committed once");
        f.sync_all()
            .with_context(|| format!("fsync of {}", self.tmp.display()))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.dest.display())
        })?;
        self.tmp = PathBuf::new();
        sync_dir(parent_of(&self.dest))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Replace `path` atomically with `bytes` at `mode`: readers see the old file
/// or the new one, never a torn one; a symlink planted at the temp name or at
/// `path` itself is never written through.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut s = Staged::new(path, mode)?;
    s.file()
        .write_all(bytes)
        .with_context(|| format!("writing {}", s.tmp_path().display()))?;
    s.commit()
}

/// A held `flock`; released when dropped.
pub type Locked = nix::fcntl::Flock<File>;

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another holder has it (non-blocking only); `holder` is what it wrote
    /// into the lock file (a pid), possibly empty.
    #[error("held by {}", if holder.is_empty() { "another process".to_owned() } else { format!("pid {holder}") })]
    Held {
        /// The holder's note.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// Take an exclusive `flock` of `path` (created 0600 if absent, never through
/// a symlink). `wait = false` returns [`LockError::Held`] at once when taken.
pub fn lock_file(path: &Path, wait: bool) -> Result<Locked, LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(SAFE)
        .open(path)
        .with_context(|| format!("opening lock {}", path.display()))?;
    let arg = if wait {
        nix::fcntl::FlockArg::LockExclusive
    } else {
        nix::fcntl::FlockArg::LockExclusiveNonblock
    };
    match nix::fcntl::Flock::lock(file, arg) {
        Ok(l) => Ok(l),
        Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = std::io::Read::read_to_string(&mut f, &mut holder);
            Err(LockError::Held {
                holder: holder.trim().to_owned(),
            })
        }
        Err((_, e)) => Err(LockError::Io(anyhow::anyhow!(
            "locking {}: {e}",
            path.display()
        ))),
    }
}

/// Write this process's pid into a held lock (what [`LockError::Held`] shows).
/// Written over the old note first and cut to length after, so a contender
/// reading meanwhile sees a pid (old or new), never an empty file.
pub fn note_holder(lock: &mut Locked) {
    use std::os::unix::fs::FileExt;
    let note = format!("{}\n", std::process::id());
    let _ = lock
        .write_all_at(note.as_bytes(), 0)
        .and_then(|()| lock.set_len(note.len() as u64));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn atomic_write_sets_the_mode_on_the_new_file_and_replaces_a_symlink_without_following_it() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "secret").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = d.path().join("m.prom");
        symlink(&victim, &out).unwrap();
        write_atomic(&out, b"x 1\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "secret");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let meta = std::fs::symlink_metadata(&out).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the symlink was replaced by a file"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "x 1\n");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no temp file left behind");
    }

    #[test]
    fn exclusive_creation_refuses_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let planted = d.path().join("new");
        symlink(&victim, &planted).unwrap();
        assert!(create_new(&planted, 0o600).is_err());
        assert!(open_append(&planted, 0o600).is_err());
        assert!(lock_file(&planted, false).is_err());
        assert!(open_read(&planted).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_held_lock_names_its_holder_and_is_free_after_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k.lock");
        let mut held = lock_file(&p, false).unwrap();
        note_holder(&mut held);
        match lock_file(&p, false) {
            Err(LockError::Held { holder }) => {
                assert_eq!(holder, std::process::id().to_string())
            }
            other => panic!("expected Held, got {:?}", other.map(|_| ())),
        }
        drop(held);
        lock_file(&p, false).expect("free again");
    }

    #[test]
    fn a_directory_someone_else_owns_or_may_write_is_untrusted() {
        use std::os::unix::fs::PermissionsExt;
        let me = nix::unistd::geteuid().as_raw();
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("ok");
        std::fs::create_dir(&ok).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(untrusted_dir(&ok, me), None);
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(untrusted_dir(&ok, me)
            .unwrap()
            .contains("without the sticky bit"));
        std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(untrusted_dir(&ok, me), None, "sticky like /var/tmp");
        // Through a symlink, the real directory is judged.
        let link = d.path().join("link");
        symlink(&ok, &link).unwrap();
        assert_eq!(untrusted_dir(&link, me), None);
        if me == 0 {
            nix::unistd::chown(&ok, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            assert!(untrusted_dir(&ok, me)
                .unwrap()
                .contains("belongs to uid 65534"));
        }
    }

    #[test]
    fn a_held_directory_refuses_symlinks_below_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink(&outside, root.join("app")).unwrap();
        std::fs::write(outside.join("x"), "outside").unwrap();
        symlink(outside.join("x"), root.join("file-link")).unwrap();
        let r = Dir::open(&root).unwrap();
        assert!(r.walk(&["app", "20261202T000000Z"], Some(0o755)).is_err());
        assert!(r.open_dir("app").is_err());
        assert!(r.open_file("file-link").is_err());
        assert!(r.create_new("file-link", 0o600).is_err());
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "nothing written outside"
        );
        let e = r.entries().unwrap();
        assert_eq!(
            e,
            vec![
                ("app".into(), Entry::Other),
                ("file-link".into(), Entry::Other)
            ]
        );
        // Real directories work, and names are single components.
        let sub = r.walk(&["db", "stamp"], Some(0o755)).unwrap();
        let mut f = sub.create_new("obj", 0o640).unwrap();
        f.write_all(b"1234").unwrap();
        assert_eq!(sub.entries().unwrap(), vec![("obj".into(), Entry::File(4))]);
        assert!(sub.open_file("../obj").is_err());
        assert!(sub.mkdir("x", 0o700).unwrap());
        assert!(
            !sub.mkdir("x", 0o700).unwrap(),
            "a second mkdir says it existed"
        );
    }

    #[test]
    fn a_lock_with_no_note_says_another_process() {
        let e = LockError::Held {
            holder: String::new(),
        };
        assert_eq!(e.to_string(), "held by another process");
    }
}
