//! A local (or mounted) directory as a destination. Objects appear atomically:
//! written under a hidden temp name in the same directory, fsynced, renamed,
//! and the directory fsynced, so a crash leaves either nothing or a whole file.
//! Every failure names the path and the OS error (EROFS, ENOSPC, …).

use super::{Cause, Deleted, Destination, Feed, ObjectInfo, StoreError, StoreResult};
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

    fn path(&self, key: &str) -> StoreResult<PathBuf> {
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Cause::BadKey {
                key: key.to_owned(),
            }
            .during(""));
        }
        Ok(self.root.join(key))
    }
}

/// A temp file that is removed unless committed.
struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<std::fs::File>,
}

impl Pending {
    fn create(dest: &Path) -> StoreResult<Pending> {
        // Keys are checked to have a name under the root.
        let dir = dest.parent().unwrap_or(dest);
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let name = dest.file_name().unwrap_or_default();
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            &crate::util::new_id()[..8]
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        Ok(Pending {
            tmp,
            dest: dest.to_owned(),
            file: Some(file),
        })
    }

    fn write(&mut self, b: &[u8]) -> StoreResult<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(b).map_err(io("writing", &self.tmp)),
            None => unreachable!("a Pending is consumed by commit"),
        }
    }

    fn commit(mut self) -> StoreResult<()> {
        let Some(f) = self.file.take() else {
            unreachable!("a Pending is consumed by commit")
        };
        f.sync_all().map_err(io("fsync of", &self.tmp))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest).map_err(io("renaming into", &self.dest))?;
        if let Some(dir) = self.dest.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync of directory", dir))?;
        }
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
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
            let dest = self.path(key).map_err(|e| e.within(step()))?;
            let mut pending = blocking(step(), move || Pending::create(&dest)).await?;
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
            blocking(step(), move || pending.commit()).await?;
            Ok(size)
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, StoreResult<()>> {
        let dest = self.path(key);
        Box::pin(blocking(format!("writing {key}"), move || {
            let mut p = Pending::create(&dest?)?;
            p.write(&body)?;
            p.commit()
        }))
    }

    fn get<'a>(&'a self, key: &'a str, limit: u64) -> BoxFuture<'a, StoreResult<Bytes>> {
        let path = self.path(key);
        Box::pin(blocking(format!("reading {key}"), move || {
            let path = path?;
            let file = std::fs::File::open(&path).map_err(io_existing("opening", &path))?;
            let too_large = || {
                Cause::TooLarge {
                    what: path.display().to_string(),
                    limit,
                }
                .during("")
            };
            let len = file.metadata().map_err(io("stat of", &path))?.len();
            if len > limit {
                return Err(too_large());
            }
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
        let from = self.path(key);
        Box::pin(blocking(format!("downloading {key}"), move || {
            use sha2::Digest;
            let from = from?;
            let mut src = std::fs::File::open(&from).map_err(io_existing("opening", &from))?;
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
        let path = self.path(key);
        Box::pin(blocking(format!("stat of {key}"), move || {
            let path = path?;
            match std::fs::metadata(&path) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io("stat of", &path)(e)),
            }
        }))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<ObjectInfo>>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        Box::pin(blocking(format!("listing {prefix}"), move || {
            let mut out = Vec::new();
            let start = root.join(prefix.trim_end_matches('/'));
            walk(&root, &start, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Deleted>> {
        let path = self.path(key);
        let root = self.root.clone();
        Box::pin(blocking(format!("deleting {key}"), move || {
            let path = path?;
            let r = match std::fs::remove_file(&path) {
                Ok(()) => Deleted::Deleted,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Deleted::Absent,
                Err(e) => return Err(io("removing", &path)(e)),
            };
            // Remove directories left empty (the stamp dir), never the root.
            let mut dir = path.parent().map(Path::to_owned);
            while let Some(d) = dir {
                if d == root || !d.starts_with(&root) || std::fs::remove_dir(&d).is_err() {
                    break;
                }
                dir = d.parent().map(Path::to_owned);
            }
            Ok(r)
        }))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> StoreResult<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    for e in rd {
        let e = e.map_err(io("listing", dir))?;
        let p = e.path();
        let ty = e.file_type().map_err(io("stat of", &p))?;
        if ty.is_dir() {
            walk(root, &p, out)?;
        } else if ty.is_file() {
            let key = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let size = e.metadata().map_err(io("stat of", &p))?.len();
            out.push(ObjectInfo { key, size });
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
            text.starts_with("writing a/manifest.json: creating "),
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
