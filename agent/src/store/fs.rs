//! A local (or mounted) directory as a destination. Objects appear atomically:
//! written under a hidden temp name in the same directory, fsynced, renamed,
//! and the directory fsynced, so a crash leaves either nothing or a whole file.

use super::{Deleted, Destination, Feed, ObjectInfo};
use anyhow::{bail, Context};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// A filesystem destination rooted at a directory.
pub struct FsStore {
    name: String,
    root: PathBuf,
}

impl FsStore {
    /// A destination named `name` at `root`.
    pub fn new(name: &str, root: &Path) -> Self {
        FsStore {
            name: name.to_owned(),
            root: root.to_owned(),
        }
    }

    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            bail!("refusing the object key {key:?}: empty, `.` or `..` component");
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
    fn create(dest: &Path) -> anyhow::Result<Pending> {
        let dir = dest.parent().context("object path has no parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = dest.file_name().context("object path has no name")?;
        let tmp = dir.join(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            &crate::util::new_id()[..8]
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        Ok(Pending {
            tmp,
            dest: dest.to_owned(),
            file: Some(file),
        })
    }

    fn write(&mut self, b: &[u8]) -> anyhow::Result<()> {
        let f = self.file.as_mut().context("write after commit")?;
        f.write_all(b)
            .with_context(|| format!("writing {}", self.tmp.display()))
    }

    fn commit(mut self) -> anyhow::Result<()> {
        let f = self.file.take().context("commit twice")?;
        f.sync_all()
            .with_context(|| format!("fsync of {}", self.tmp.display()))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("renaming into {}", self.dest.display()))?;
        if let Some(dir) = self.dest.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("fsync of directory {}", dir.display()))?;
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

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> BoxFuture<'static, anyhow::Result<T>> {
    Box::pin(async move { tokio::task::spawn_blocking(f).await? })
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
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let dest = self.path(key)?;
            let pending = tokio::task::spawn_blocking(move || Pending::create(&dest)).await??;
            let mut pending = Some(pending);
            let mut size = 0u64;
            loop {
                match parts.recv().await {
                    Some(Feed::Part(b)) => {
                        let mut p = pending.take().context("pending file lost")?;
                        size += b.len() as u64;
                        pending = Some(
                            tokio::task::spawn_blocking(move || p.write(&b).map(|()| p)).await??,
                        );
                    }
                    Some(Feed::End) => break,
                    None => bail!("the stream ended before the object was complete"),
                }
            }
            let p = pending.take().context("pending file lost")?;
            tokio::task::spawn_blocking(move || p.commit()).await??;
            Ok(size)
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, anyhow::Result<()>> {
        let dest = self.path(key);
        blocking(move || {
            let mut p = Pending::create(&dest?)?;
            p.write(&body)?;
            p.commit()
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Bytes>> {
        let path = self.path(key);
        blocking(move || {
            let path = path?;
            std::fs::read(&path)
                .map(Bytes::from)
                .with_context(|| format!("reading {}", path.display()))
        })
    }

    fn fetch<'a>(
        &'a self,
        key: &'a str,
        mut dst: std::fs::File,
    ) -> BoxFuture<'a, anyhow::Result<(u64, String)>> {
        let from = self.path(key);
        blocking(move || {
            use sha2::Digest;
            let from = from?;
            let mut src = std::fs::File::open(&from)
                .with_context(|| format!("opening {}", from.display()))?;
            let mut hash = sha2::Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = std::io::Read::read(&mut src, &mut buf)
                    .with_context(|| format!("reading {}", from.display()))?;
                if k == 0 {
                    break;
                }
                hash.update(&buf[..k]);
                dst.write_all(&buf[..k])
                    .with_context(|| format!("passing on what was read from {}", from.display()))?;
                n += k as u64;
            }
            Ok((n, hex::encode(hash.finalize())))
        })
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Option<u64>>> {
        let path = self.path(key);
        blocking(move || {
            let path = path?;
            match std::fs::metadata(&path) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e).with_context(|| format!("stat of {}", path.display())),
            }
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<ObjectInfo>>> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut out = Vec::new();
            let start = root.join(prefix.trim_end_matches('/'));
            walk(&root, &start, &mut out)?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Deleted>> {
        let path = self.path(key);
        let root = self.root.clone();
        blocking(move || {
            let path = path?;
            let r = match std::fs::remove_file(&path) {
                Ok(()) => Deleted::Deleted,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Deleted::Absent,
                Err(e) => return Err(e).with_context(|| format!("deleting {}", path.display())),
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
        })
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectInfo>) -> anyhow::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in rd {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let ty = e.file_type()?;
        let p = e.path();
        if ty.is_dir() {
            walk(root, &p, out)?;
        } else if ty.is_file() {
            let key = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push(ObjectInfo {
                key,
                size: e.metadata()?.len(),
            });
        }
    }
    Ok(())
}
