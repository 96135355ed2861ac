//! A local (or mounted) directory as a destination. Objects appear atomically:
//! written under a hidden temp name in the same directory, fsynced, renamed,
//! and the directory fsynced, so a crash leaves either nothing or a whole file.
//! Every failure names the path and the OS error (EROFS, ENOSPC, …).

use super::{
    Cause, Deleted, Destination, Feed, ObjectInfo, Reservation, StoreError, StoreResult, WRITER,
};
use crate::fsx::{Dir, Entry};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

/// A filesystem destination rooted at a directory.
pub struct FsStore {
    name: String,
    root: PathBuf,
}

/// The failure of filesystem call `op` on `path`.
fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| {
        Cause::Io {
            op,
            path: path.to_owned(),
            source,
        }
        .during("")
    }
}

/// As [`io`], but an absent file is [`Cause::NotFound`].
fn io_existing<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Cause::NotFound {
                detail: format!("{}: {source}", path.display()),
            }
            .during("")
        } else {
            io(op, path)(source)
        }
    }
}

impl FsStore {
    /// A destination named `name` at `root`.
    pub fn new(name: &str, root: &Path) -> Self {
        FsStore {
            name: name.to_owned(),
            root: root.to_owned(),
        }
    }

    /// The components of `key`, all single names.
    fn names<'k>(&self, key: &'k str) -> StoreResult<Vec<&'k str>> {
        let names: Vec<&str> = key.trim_end_matches('/').split('/').collect();
        if names
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(Cause::BadKey {
                key: key.to_owned(),
            }
            .during(""));
        }
        Ok(names)
    }

    /// The root, held open (created, with its parents, when `create`).
    fn root(&self, create: bool) -> StoreResult<Dir> {
        if create {
            std::fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        }
        Dir::open(&self.root).map_err(io_existing("opening", &self.root))
    }

    /// The directory holding `key` and the object's name in it, walked down
    /// from the root without following a symlink (a symlink inside a
    /// destination is refused: it could redirect a backup anywhere).
    fn parent<'k>(&self, key: &'k str, create: bool) -> StoreResult<(Dir, &'k str)> {
        let names = self.names(key)?;
        let (name, dirs) = names.split_last().unwrap_or((&"", &[]));
        let root = self.root(create)?;
        let dir = root
            .walk(dirs, create.then_some(0o755))
            .map_err(io_existing("opening", &self.root.join(dirs.join("/"))))?;
        Ok((dir, name))
    }
}

/// A temp file that is removed unless committed.
struct Pending {
    dir: Dir,
    tmp: String,
    name: String,
    file: Option<std::fs::File>,
}

impl Pending {
    fn create(dir: Dir, name: &str) -> StoreResult<Pending> {
        let tmp = format!(".{name}.partial-{}", &crate::util::new_id()[..8]);
        let file = dir
            .create_new(&tmp, 0o644)
            .map_err(io("creating", &dir.path().join(&tmp)))?;
        Ok(Pending {
            dir,
            tmp,
            name: name.to_owned(),
            file: Some(file),
        })
    }

    fn write(&mut self, b: &[u8]) -> StoreResult<()> {
        let path = self.dir.path().join(&self.tmp);
        match self.file.as_mut() {
            Some(f) => f.write_all(b).map_err(io("writing", &path)),
            None => unreachable!("a Pending is consumed by commit"),
        }
    }

    /// fsync, then rename into place (`replace`) or link there only if
    /// nothing is (`!replace`), then fsync the directory.
    fn commit(mut self, replace: bool) -> StoreResult<()> {
        let Some(f) = self.file.take() else {
            unreachable!("a Pending is consumed by commit")
        };
        let dest = self.dir.path().join(&self.name);
        f.sync_all()
            .map_err(io("fsync of", &self.dir.path().join(&self.tmp)))?;
        drop(f);
        if replace {
            self.dir
                .rename(&self.tmp, &self.name)
                .map_err(io("renaming into", &dest))?;
        } else {
            match std::fs::hard_link(self.dir.path().join(&self.tmp), &dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(Cause::Exists {
                        key: dest.display().to_string(),
                    }
                    .during(""))
                }
                Err(e) => return Err(io("linking into", &dest)(e)),
            }
            let _ = self.dir.remove_file(&self.tmp);
        }
        self.tmp = String::new();
        self.dir
            .sync()
            .map_err(io("fsync of directory", self.dir.path()))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.tmp.is_empty() {
            let _ = self.dir.remove_file(&self.tmp);
        }
    }
}

/// Run blocking filesystem work off the runtime; a step that failed is
/// named `step`.
async fn blocking<T: Send + 'static>(
    step: String,
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.within(step)),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// A regular file's size; a symlink or anything else is refused.
fn regular(dir: &Dir, name: &str) -> StoreResult<Option<u64>> {
    let path = dir.path().join(name);
    match dir.stat(name).map_err(io("stat of", &path))? {
        None => Ok(None),
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
            Ok(Some(u64::try_from(st.st_size).unwrap_or(0)))
        }
        Some(_) => Err(io("opening", &path)(std::io::Error::other(
            "not a regular file (a symlink inside a destination is never followed)",
        ))),
    }
}

impl FsStore {
    fn write_small(&self, key: &str, body: &[u8], replace: bool) -> StoreResult<()> {
        let (dir, name) = self.parent(key, true)?;
        let mut p = Pending::create(dir, name)?;
        p.write(body)?;
        p.commit(replace)
    }
}

impl Destination for FsStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn upload<'a>(
        &'a self,
        key: &'a str,
        mut parts: mpsc::Receiver<Feed>,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let step = || format!("writing {key}");
            let (dir, name) = self.parent(key, true).map_err(|e| e.within(step()))?;
            let name = name.to_owned();
            let mut pending = blocking(step(), move || Pending::create(dir, &name)).await?;
            let mut size = 0u64;
            loop {
                match parts.recv().await {
                    Some(Feed::Part(b)) => {
                        size += b.len() as u64;
                        pending = blocking(step(), move || {
                            let mut p = pending;
                            p.write(&b).map(|()| p)
                        })
                        .await?;
                    }
                    Some(Feed::End) => break,
                    None => return Err(Cause::Incomplete.during(step())),
                }
            }
            blocking(step(), move || pending.commit(true)).await?;
            Ok(size)
        })
    }

    fn reserve<'a>(
        &'a self,
        dir: &'a str,
        writer: &'a str,
    ) -> BoxFuture<'a, StoreResult<Reservation>> {
        let (this, dir, writer) = (self.clone_store(), dir.to_owned(), writer.to_owned());
        Box::pin(blocking(format!("reserving {dir}"), move || {
            let names = this.names(&dir)?;
            let (stamp, parents) = names.split_last().unwrap_or((&"", &[]));
            let root = this.root(true)?;
            let parent = root
                .walk(parents, Some(0o755))
                .map_err(io_existing("opening", &this.root.join(parents.join("/"))))?;
            let path = parent.path().join(stamp);
            // mkdir is atomic: of two runs, exactly one creates the directory.
            if !parent.mkdir(stamp, 0o755).map_err(io("creating", &path))? {
                let writer = parent
                    .open_dir(stamp)
                    .and_then(|d| d.open_file(WRITER))
                    .ok()
                    .and_then(|f| {
                        let mut s = String::new();
                        f.take(4096)
                            .read_to_string(&mut s)
                            .ok()
                            .map(|_| s.trim().to_owned())
                    });
                return Ok(Reservation::Taken { writer });
            }
            parent
                .sync()
                .map_err(io("fsync of directory", parent.path()))?;
            let d = parent.open_dir(stamp).map_err(io("opening", &path))?;
            let mut p = Pending::create(d, WRITER)?;
            p.write(writer.as_bytes())?;
            p.commit(false)?;
            Ok(Reservation::Ours)
        }))
    }

    fn release<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        let (this, dir) = (self.clone_store(), dir.to_owned());
        Box::pin(blocking(format!("releasing {dir}"), move || {
            let names = this.names(&dir)?;
            // The chain of directories down to the stamp, each held open.
            let mut chain = vec![this.root(false)?];
            for n in &names {
                match chain[chain.len() - 1].open_dir(n) {
                    Ok(d) => chain.push(d),
                    Err(_) => return Ok(()),
                }
            }
            let _ = chain[chain.len() - 1].remove_file(WRITER);
            // Only empty directories go (the stamp, then a database directory
            // this run made): anything else is not ours to remove.
            for (parent, child) in chain.iter().rev().skip(1).zip(names.iter().rev()) {
                if parent.remove_dir(child).is_err() {
                    break;
                }
            }
            Ok(())
        }))
    }

    fn put_new<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, StoreResult<()>> {
        let this = self.clone_store();
        let k = key.to_owned();
        Box::pin(blocking(format!("writing {key}"), move || {
            this.write_small(&k, &body, false)
        }))
    }

    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, StoreResult<()>> {
        let this = self.clone_store();
        let k = key.to_owned();
        Box::pin(blocking(format!("writing {key}"), move || {
            this.write_small(&k, &body, true)
        }))
    }

    fn get<'a>(&'a self, key: &'a str, limit: u64) -> BoxFuture<'a, StoreResult<Bytes>> {
        let this = self.clone_store();
        let k = key.to_owned();
        Box::pin(blocking(format!("reading {key}"), move || {
            let (dir, name) = this.parent(&k, false)?;
            let path = dir.path().join(name);
            let too_large = || {
                Cause::TooLarge {
                    what: path.display().to_string(),
                    limit,
                }
                .during("")
            };
            let Some(len) = regular(&dir, name)? else {
                return Err(io_existing("opening", &path)(
                    std::io::ErrorKind::NotFound.into(),
                ));
            };
            if len > limit {
                return Err(too_large());
            }
            let file = dir.open_file(name).map_err(io_existing("opening", &path))?;
            // The file may grow between the stat and the read: read one byte
            // past the limit at most, and refuse if it is there.
            let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.take(limit + 1)
                .read_to_end(&mut body)
                .map_err(io("reading", &path))?;
            if body.len() as u64 > limit {
                return Err(too_large());
            }
            Ok(Bytes::from(body))
        }))
    }

    fn fetch<'a>(
        &'a self,
        key: &'a str,
        mut dst: std::fs::File,
    ) -> BoxFuture<'a, StoreResult<(u64, String)>> {
        let this = self.clone_store();
        let k = key.to_owned();
        Box::pin(blocking(format!("downloading {key}"), move || {
            use sha2::Digest;
            let (dir, name) = this.parent(&k, false)?;
            let from = dir.path().join(name);
            let mut src = dir.open_file(name).map_err(io_existing("opening", &from))?;
            let mut hash = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = src.read(&mut buf).map_err(io("reading", &from))?;
                if k == 0 {
                    break;
                }
                hash.update(&buf[..k]);
                dst.write_all(&buf[..k])
                    .map_err(io("passing on what was read from", &from))?;
                n += k as u64;
            }
            Ok((n, hex::encode(hash.finalize())))
        }))
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        let this = self.clone_store();
        let k = key.to_owned();
        Box::pin(blocking(format!("stat of {key}"), move || {
            match this.parent(&k, false) {
                Ok((dir, name)) => regular(&dir, name),
                Err(e) if matches!(e.cause(), Cause::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        }))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<ObjectInfo>>> {
        let this = self.clone_store();
        let prefix = prefix.trim_end_matches('/').to_owned();
        Box::pin(blocking(format!("listing {prefix}"), move || {
            let mut out = Vec::new();
            let root = match this.root(false) {
                Ok(r) => r,
                Err(e) if matches!(e.cause(), Cause::NotFound { .. }) => return Ok(out),
                Err(e) => return Err(e),
            };
            let names = if prefix.is_empty() {
                Vec::new()
            } else {
                this.names(&prefix)?
            };
            let start = match root.walk(&names, None) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(io("opening", &this.root.join(&prefix))(e)),
            };
            walk(&start, &prefix, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Deleted>> {
        let this = self.clone_store();
        let k = key.to_owned();
        Box::pin(blocking(format!("deleting {key}"), move || {
            let names = this.names(&k)?;
            let (name, dirs) = names.split_last().unwrap_or((&"", &[]));
            let root = this.root(false)?;
            // The chain of directories down to the object, each held open.
            let mut chain = vec![root];
            for d in dirs {
                let next = match chain[chain.len() - 1].open_dir(d) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(Deleted::Absent)
                    }
                    Err(e) => return Err(io("opening", &chain[chain.len() - 1].path().join(d))(e)),
                };
                chain.push(next);
            }
            let last = &chain[chain.len() - 1];
            let path = last.path().join(name);
            let r = match last.remove_file(name).map_err(io("removing", &path))? {
                true => Deleted::Deleted,
                false => Deleted::Absent,
            };
            // Remove directories left empty (the stamp dir), never the root.
            for (parent, child) in chain.iter().rev().skip(1).zip(dirs.iter().rev()) {
                if parent.remove_dir(child).is_err() {
                    break;
                }
            }
            Ok(r)
        }))
    }
}

impl FsStore {
    /// A handle for blocking work (the root path and name).
    fn clone_store(&self) -> FsStore {
        FsStore::new(&self.name, &self.root)
    }
}

/// Every regular file below `dir` (whose key prefix is `prefix`); symlinks
/// and other non-files are skipped, never followed.
fn walk(dir: &Dir, prefix: &str, out: &mut Vec<ObjectInfo>) -> StoreResult<()> {
    let entries = dir.entries().map_err(io("listing", dir.path()))?;
    for (name, kind) in entries {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        match kind {
            Entry::Dir => {
                let sub = dir
                    .open_dir(&name)
                    .map_err(io("opening", &dir.path().join(&name)))?;
                walk(&sub, &key, out)?;
            }
            Entry::File(size) => out.push(ObjectInfo { key, size }),
            Entry::Other => {
                tracing::warn!(
                    "{}: not a file or directory (a symlink?); ignored, never followed",
                    dir.path().join(&name).display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn get_refuses_a_file_over_the_limit_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new("local", dir.path());
        store
            .put("a/manifest.json", Bytes::from_static(b"{\"x\": 1}"))
            .await
            .unwrap();
        assert_eq!(
            &store.get("a/manifest.json", 8).await.unwrap()[..],
            b"{\"x\": 1}"
        );
        let e = store.get("a/manifest.json", 7).await.unwrap_err();
        assert!(matches!(e.cause(), Cause::TooLarge { limit: 7, .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&dir.path().join("a/manifest.json").display().to_string()),
            "{e}"
        );
        let e = store.get("a/absent.json", 8).await.unwrap_err();
        assert!(matches!(e.cause(), Cause::NotFound { .. }), "{e}");
        let e = store.get("a/../x", 8).await.unwrap_err();
        assert!(matches!(e.cause(), Cause::BadKey { .. }), "{e}");
    }

    #[tokio::test]
    async fn an_upload_whose_feed_breaks_leaves_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new("local", dir.path());
        let (tx, rx) = mpsc::channel(2);
        tx.send(Feed::Part(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        drop(tx);
        let e = store.upload("a/b.pgp", rx).await.unwrap_err();
        assert!(matches!(e.cause(), Cause::Incomplete), "{e}");
        assert_eq!(
            e.to_string(),
            "writing a/b.pgp: the stream ended before the object was complete"
        );
        assert!(store.list("a/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failure_names_the_step_the_path_and_the_os_error() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the object's directory should be.
        std::fs::write(dir.path().join("a"), b"").unwrap();
        let store = FsStore::new("local", dir.path());
        let e = store
            .put("a/manifest.json", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("writing a/manifest.json: opening "),
            "{text}"
        );
        assert!(
            text.contains(&dir.path().join("a").display().to_string()),
            "{text}"
        );
        assert!(text.contains("os error"), "{text}");
        assert!(matches!(e.cause(), Cause::Io { .. }));
    }
}
