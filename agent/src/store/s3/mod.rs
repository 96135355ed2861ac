//! Any S3-compatible API (MinIO, Backblaze B2, Hetzner Object Storage, AWS) as
//! a destination (docs/adr/0003-s3-client.md): streaming multipart upload with
//! a bounded number of parts in flight, a signed SHA-256 on every part (the
//! server recomputes it and refuses a part that does not match; parts of a
//! locked object also carry the Content-MD5 S3 demands there), Object Lock
//! COMPLIANCE headers, abort on failure, HEAD to confirm sizes, bounded
//! ListObjectsV2 paging and version-aware deletes (a locked version is
//! refused by the server and reported as [`Deleted::Locked`]).
//!
//! The pieces: [`sign`] (SigV4 by `aws-sigv4`), [`xml`] (every document we
//! read or write, as serde types), [`transport`] (one request: retries,
//! timeouts, cancellation, answers read with a size cap). This file is what
//! the S3 operations mean for a destination.

pub mod sign;
pub mod transport;
pub mod xml;

use super::{Cause, Deleted, Destination, Feed, ObjectInfo, Reservation, StoreResult, WRITER};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use md5::Md5;
use reqwest::header::HeaderMap;
use reqwest::Method;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use transport::{Limits, Request, Target, Transport};
use xml::Parsed;

/// The largest XML answer read (a list page of 1000 keys of 1 KiB each is
/// about 1.3 MB).
pub const ANSWER_LIMIT: u64 = 8 << 20;
/// The most pages one listing may take: 10 million keys at S3's 1000 a page.
pub const MAX_LIST_PAGES: u32 = 10_000;
/// How long an abort may take once the job is cancelled.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(5);

/// Where and how to reach a bucket (built from the configuration's
/// `[[destinations]]` entry; this leaf never reads the configuration itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// SigV4 region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// File holding the access key id.
    pub access_key_id_file: std::path::PathBuf,
    /// File holding the secret access key.
    pub secret_access_key_file: std::path::PathBuf,
    /// > 0: COMPLIANCE retention for this many days on every object written.
    pub object_lock_days: u32,
    /// Path-style addressing.
    pub path_style: bool,
    /// The lowest TLS version accepted (`[policy] min_tls_version`).
    pub min_tls: crate::tls_floor::TlsFloor,
    /// PEM certificates trusted besides the public roots (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// An S3 bucket as a destination.
pub struct S3Store {
    name: String,
    cfg: S3Settings,
    t: Transport,
    max_in_flight: usize,
}

impl S3Store {
    /// Open a bucket; reads the credentials from their secret files. Every
    /// request ends when `cancel` fires.
    pub fn new(
        name: &str,
        cfg: &S3Settings,
        max_in_flight: usize,
        cancel: CancellationToken,
    ) -> StoreResult<Self> {
        let read = |p: &std::path::Path| -> StoreResult<String> {
            let s = std::fs::read_to_string(p).map_err(|source| {
                Cause::Io {
                    op: "reading the S3 credential file",
                    path: p.to_owned(),
                    source,
                }
                .during("")
            })?;
            let s = s.trim().to_owned();
            if s.is_empty() {
                return Err(Cause::Setup(format!(
                    "the S3 credential file {} is empty",
                    p.display()
                ))
                .during(""));
            }
            Ok(s)
        };
        let ca_pem = match &cfg.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|source| {
                Cause::Io {
                    op: "reading the S3 endpoint's ca_file",
                    path: p.clone(),
                    source,
                }
                .during("")
            })?),
            None => None,
        };
        let access_key = read(&cfg.access_key_id_file)?;
        let secret_key = read(&cfg.secret_access_key_file)?;
        let t = Transport::new(
            &Target {
                endpoint: &cfg.endpoint,
                bucket: &cfg.bucket,
                path_style: cfg.path_style,
                region: &cfg.region,
                access_key: &access_key,
                secret_key: &secret_key,
                min_tls: cfg.min_tls,
                ca_pem: ca_pem.as_deref(),
            },
            cancel,
            Limits::default(),
        )
        .map_err(|c| c.during(""))?;
        Ok(S3Store {
            name: name.to_owned(),
            cfg: cfg.clone(),
            t,
            max_in_flight: max_in_flight.max(1),
        })
    }

    /// Send and read the whole (small) answer as a document whose root is
    /// one of `roots`; an `<Error>` in its place is the server's refusal (S3
    /// may answer 200 and fail a completion in the body).
    async fn document<T: serde::de::DeserializeOwned>(
        &self,
        req: &Request<'_>,
        roots: &[&str],
    ) -> Result<(HeaderMap, T), Cause> {
        let mut resp = self.t.send(req).await?;
        let headers = std::mem::take(resp.headers_mut());
        let body = self.t.answer(resp, ANSWER_LIMIT).await?;
        match xml::parse::<T>(roots, &body).map_err(|d| self.t.malformed(d))? {
            Parsed::Answer(a) => Ok((headers, a)),
            Parsed::Error(e) => Err(Cause::Refused {
                status: 200,
                code: e.code,
                message: e.message,
            }),
        }
    }

    /// Send, then read (and drop) a small answer.
    async fn exchange(&self, req: &Request<'_>) -> Result<(), Cause> {
        let resp = self.t.send(req).await?;
        self.t.answer(resp, ANSWER_LIMIT).await.map(drop)
    }

    /// PUT `key` only if no object is there (`If-None-Match: *`, S3's
    /// conditional write): [`Cause::Exists`] when one is. A server without
    /// conditional writes (501) gets a HEAD first, then a plain PUT.
    /// `locked`: with the destination's Object Lock (a manifest), or not (a
    /// stamp's writer marker, which must go again when its run fails).
    async fn conditional_put(&self, key: &str, body: Bytes, locked: bool) -> Result<(), Cause> {
        let mut req = Request::new(Method::PUT, key, &[]);
        if locked {
            req.headers = Self::lock_headers(self.lock_until().as_deref());
        }
        req.headers.push(("content-md5", content_md5(&body)));
        req.headers
            .push(("content-type", "application/json".into()));
        req.body = body;
        let mut conditional = req.clone();
        conditional.headers.push(("if-none-match", "*".into()));
        match self.exchange(&conditional).await {
            Ok(()) => Ok(()),
            Err(Cause::Refused { status: 412, .. }) => Err(Cause::Exists {
                key: key.to_owned(),
            }),
            Err(Cause::Unsupported { .. })
            | Err(Cause::Refused {
                status: 400 | 501, ..
            }) => {
                conditional.headers.pop();
                if self
                    .head(key)
                    .await
                    .map_err(super::StoreError::into_cause)?
                    .is_some()
                {
                    return Err(Cause::Exists {
                        key: key.to_owned(),
                    });
                }
                self.exchange(&req).await
            }
            Err(c) => Err(c),
        }
    }

    /// When a new object's COMPLIANCE retention ends, if the destination locks.
    fn lock_until(&self) -> Option<String> {
        (self.cfg.object_lock_days > 0).then(|| {
            (chrono::Utc::now() + chrono::Duration::days(i64::from(self.cfg.object_lock_days)))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
    }

    /// Object Lock headers for a new object.
    fn lock_headers(until: Option<&str>) -> Vec<(&'static str, String)> {
        until.map_or_else(Vec::new, |u| {
            vec![
                ("x-amz-object-lock-mode", "COMPLIANCE".into()),
                ("x-amz-object-lock-retain-until-date", u.to_owned()),
            ]
        })
    }

    /// PutObjectRetention on the version just written. S3 honours the lock
    /// headers of CreateMultipartUpload, but some S3-compatible servers (moto,
    /// older MinIO) drop them there; setting the same COMPLIANCE date again is
    /// allowed, so this makes the lock certain everywhere.
    async fn put_retention(
        &self,
        key: &str,
        version: Option<&str>,
        until: &str,
    ) -> StoreResult<()> {
        let body = Bytes::from(xml::to_xml(&xml::Retention::compliance(until)));
        let mut q = vec![("retention", "")];
        if let Some(v) = version {
            q.push(("versionId", v));
        }
        let mut req = Request::new(Method::PUT, key, &q);
        req.headers.push(("content-md5", content_md5(&body)));
        req.body = body;
        self.exchange(&req).await.map_err(|c| {
            c.during(format!(
                "setting COMPLIANCE retention until {until} on {key}"
            ))
        })?;
        Ok(())
    }

    async fn multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &mut mpsc::Receiver<Feed>,
    ) -> StoreResult<(u64, Option<String>)> {
        let mut in_flight = FuturesUnordered::new();
        let mut done: Vec<xml::CompletedPart> = Vec::new();
        let mut size = 0u64;
        let mut next = 1u32;
        let mut ended = false;
        loop {
            tokio::select! {
                biased;
                Some(part) = in_flight.next(), if !in_flight.is_empty() => {
                    let part: StoreResult<xml::CompletedPart> = part;
                    done.push(part?);
                }
                feed = parts.recv(), if !ended && in_flight.len() < self.max_in_flight => match feed {
                    Some(Feed::Part(b)) => {
                        let n = next;
                        next += 1;
                        size += b.len() as u64;
                        in_flight.push(self.upload_part(key, upload_id, n, b));
                    }
                    Some(Feed::End) => ended = true,
                    None => return Err(Cause::Incomplete.during(format!("uploading {key}"))),
                },
                else => break,
            }
        }
        if done.is_empty() {
            // An empty stream still makes a (zero-length) object.
            done.push(self.upload_part(key, upload_id, 1, Bytes::new()).await?);
        }
        done.sort_by_key(|p| p.part_number);
        let body = Bytes::from(xml::to_xml(&xml::CompleteMultipartUpload { parts: done }));
        let q = [("uploadId", upload_id)];
        let mut req = Request::new(Method::POST, key, &q);
        req.headers.push(("content-md5", content_md5(&body)));
        req.body = body;
        let (headers, xml::CompleteMultipartUploadResult {}) = self
            .document(&req, xml::CompleteMultipartUploadResult::ROOTS)
            .await
            .map_err(|c| c.during(format!("completing the multipart upload of {key}")))?;
        Ok((size, header(&headers, "x-amz-version-id")))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        body: Bytes,
    ) -> StoreResult<xml::CompletedPart> {
        let len = body.len();
        let ns = n.to_string();
        let q = [("partNumber", ns.as_str()), ("uploadId", upload_id)];
        let mut req = Request::new(Method::PUT, key, &q);
        // The signed x-amz-content-sha256 already makes the server check every
        // byte of the part; S3 additionally demands Content-MD5 (or a flexible
        // checksum) on uploads to an Object Lock retention, and only there is
        // the second hash over the part worth its CPU.
        if self.cfg.object_lock_days > 0 {
            req.headers.push(("content-md5", content_md5(&body)));
        }
        req.body = body;
        let step = || format!("uploading part {n} ({len} bytes) of {key}");
        let resp = self.t.send(&req).await.map_err(|c| c.during(step()))?;
        let etag = header(resp.headers(), "etag")
            .ok_or_else(|| self.t.malformed("no ETag").during(step()))?;
        Ok(xml::CompletedPart {
            part_number: n,
            etag,
        })
    }

    /// Every page of a listing (step `step`, document `root`): the `base`
    /// query, plus `resume(token)` after the first page; `take` keeps a
    /// page's entries and says whether it is truncated and where the next
    /// page starts. Bounded by [`Paging`]; cancellation is checked between
    /// pages as well as during each.
    async fn paged<T: serde::de::DeserializeOwned>(
        &self,
        step: &str,
        root: &str,
        base: &[(&str, &str)],
        resume: fn(&str) -> Vec<(&'static str, String)>,
        mut take: impl FnMut(T) -> (bool, Option<String>),
    ) -> StoreResult<()> {
        let mut paging = Paging::new(MAX_LIST_PAGES);
        let mut token: Option<String> = None;
        loop {
            if self.t.is_cancelled() {
                return Err(Cause::Cancelled.during(step));
            }
            let extra = token.as_deref().map(resume).unwrap_or_default();
            let mut q = base.to_vec();
            q.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
            let (_, page) = self
                .document::<T>(&Request::new(Method::GET, "", &q), &[root])
                .await
                .map_err(|c| c.during(step))?;
            let (truncated, next) = take(page);
            match paging
                .next(truncated, next)
                .map_err(|d| self.t.malformed(d).during(step))?
            {
                Some(t) => token = Some(t),
                None => return Ok(()),
            }
        }
    }

    /// HEAD: the answer's headers, None if the key is absent.
    async fn head(&self, key: &str) -> StoreResult<Option<HeaderMap>> {
        match self.t.send(&Request::new(Method::HEAD, key, &[])).await {
            Ok(mut r) => Ok(Some(std::mem::take(r.headers_mut()))),
            Err(Cause::NotFound { .. }) => Ok(None),
            Err(c) => Err(c.during(format!("HEAD {key}"))),
        }
    }

    /// Abort one multipart upload; after a failure the job may be cancelled,
    /// so this takes at most a moment then.
    async fn abort(&self, key: &str, upload_id: &str) -> Result<(), Cause> {
        let q = [("uploadId", upload_id)];
        self.t
            .send_cleanup(&Request::new(Method::DELETE, key, &q), CLEANUP_DEADLINE)
            .await
            .map(drop)
    }
}

/// Guards a paged listing against a peer that never stops: a truncated page
/// must name where the next one starts, that place must move, and the pages
/// are counted.
#[derive(Debug)]
struct Paging {
    pages: u32,
    max: u32,
    last: Option<String>,
}

impl Paging {
    fn new(max: u32) -> Self {
        Paging {
            pages: 0,
            max,
            last: None,
        }
    }

    /// After a page: where the next starts (None: the listing is complete).
    fn next(&mut self, truncated: bool, token: Option<String>) -> Result<Option<String>, String> {
        self.pages += 1;
        if !truncated {
            return Ok(None);
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(format!(
                "page {} is truncated but names no continuation token",
                self.pages
            ));
        };
        if self.last.as_ref() == Some(&token) {
            return Err(format!(
                "the continuation token did not change from page {} to page {}",
                self.pages - 1,
                self.pages
            ));
        }
        if self.pages >= self.max {
            return Err(format!(
                "still truncated after {} pages, the most one listing may take",
                self.pages
            ));
        }
        self.last = Some(token.clone());
        Ok(Some(token))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn content_md5(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(b))
}

impl Destination for S3Store {
    fn name(&self) -> &str {
        &self.name
    }

    fn location(&self) -> String {
        format!("s3://{} at {}", self.cfg.bucket, self.cfg.endpoint)
    }

    fn upload<'a>(
        &'a self,
        key: &'a str,
        mut parts: mpsc::Receiver<Feed>,
    ) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let until = self.lock_until();
            let q = [("uploads", "")];
            let mut req = Request::new(Method::POST, key, &q);
            req.headers = Self::lock_headers(until.as_deref());
            let (_, started) = self
                .document::<xml::InitiateMultipartUploadResult>(
                    &req,
                    &["InitiateMultipartUploadResult"],
                )
                .await
                .map_err(|c| c.during(format!("starting the multipart upload of {key}")))?;
            let upload_id = started.upload_id;
            match self.multipart(key, &upload_id, &mut parts).await {
                Ok((n, version)) => {
                    if let Some(u) = &until {
                        self.put_retention(key, version.as_deref(), u).await?;
                    }
                    Ok(n)
                }
                Err(e) => {
                    // Stop the producer first, then free the server's storage.
                    drop(parts);
                    if let Err(abort) = self.abort(key, &upload_id).await {
                        tracing::warn!(destination = %self.name, "aborting the multipart upload of {key}: {abort}");
                    }
                    Err(e)
                }
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            let mut req = Request::new(Method::PUT, key, &[]);
            req.headers = Self::lock_headers(self.lock_until().as_deref());
            req.headers.push(("content-md5", content_md5(&body)));
            req.headers
                .push(("content-type", "application/json".into()));
            req.body = body;
            self.exchange(&req)
                .await
                .map_err(|c| c.during(format!("writing {key}")))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str, limit: u64) -> BoxFuture<'a, StoreResult<Bytes>> {
        Box::pin(async move {
            let step = || format!("reading {key}");
            let resp = self
                .t
                .send(&Request::new(Method::GET, key, &[]))
                .await
                .map_err(|c| c.during(step()))?;
            self.t
                .answer(resp, limit)
                .await
                .map_err(|c| c.during(step()))
        })
    }

    fn fetch<'a>(
        &'a self,
        key: &'a str,
        to: std::fs::File,
    ) -> BoxFuture<'a, StoreResult<(u64, String)>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let step = || format!("downloading {key}");
            let mut resp = self
                .t
                .send(&Request::new(Method::GET, key, &[]))
                .await
                .map_err(|c| c.during(step()))?;
            let mut file = tokio::fs::File::from_std(to);
            let mut hash = Sha256::new();
            let mut n = 0u64;
            let passing = |source| {
                Cause::Io {
                    op: "passing on what was downloaded of",
                    path: key.into(),
                    source,
                }
                .during(step())
            };
            while let Some(chunk) = self
                .t
                .chunk(&mut resp)
                .await
                .map_err(|c| c.during(step()))?
            {
                hash.update(&chunk);
                n += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(passing)?;
            }
            file.flush().await.map_err(passing)?;
            Ok((n, hex::encode(hash.finalize())))
        })
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        Box::pin(async move {
            let Some(headers) = self.head(key).await? else {
                return Ok(None);
            };
            let len = header(&headers, "content-length").and_then(|v| v.parse().ok());
            len.map(Some).ok_or_else(|| {
                self.t
                    .malformed("no Content-Length")
                    .during(format!("HEAD {key}"))
            })
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, StoreResult<Vec<ObjectInfo>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            self.paged(
                &format!("listing {prefix}"),
                "ListBucketResult",
                &[("list-type", "2"), ("prefix", prefix)],
                |token| vec![("continuation-token", token.to_owned())],
                |page: xml::ListBucketResult| {
                    out.extend(page.contents.into_iter().map(|o| ObjectInfo {
                        key: o.key,
                        size: o.size,
                    }));
                    (page.is_truncated, page.next_continuation_token)
                },
            )
            .await?;
            Ok(out)
        })
    }

    fn abort_stale_uploads<'a>(
        &'a self,
        prefix: &'a str,
        may_abort: &'a (dyn Fn(&str) -> bool + Sync),
    ) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        Box::pin(async move {
            let mut open = Vec::new();
            // The next page starts at a key and an upload id; NUL, which XML
            // text cannot hold, joins them into one token.
            self.paged(
                &format!("listing unfinished multipart uploads under {prefix}"),
                "ListMultipartUploadsResult",
                &[("uploads", ""), ("prefix", prefix)],
                |token| {
                    let (key, id) = token.split_once('\0').unwrap_or((token, ""));
                    vec![
                        ("key-marker", key.to_owned()),
                        ("upload-id-marker", id.to_owned()),
                    ]
                },
                |page: xml::ListMultipartUploadsResult| {
                    open.extend(page.upload);
                    let next = page.next_key_marker.map(|key| {
                        format!("{key}\0{}", page.next_upload_id_marker.unwrap_or_default())
                    });
                    (page.is_truncated, next)
                },
            )
            .await?;
            let mut aborted = Vec::new();
            for u in open {
                if !may_abort(&u.key) {
                    continue;
                }
                let q = [("uploadId", u.upload_id.as_str())];
                self.t
                    .send(&Request::new(Method::DELETE, &u.key, &q))
                    .await
                    .map_err(|c| {
                        c.during(format!(
                            "aborting the unfinished multipart upload of {}",
                            u.key
                        ))
                    })?;
                aborted.push(u.key);
            }
            Ok(aborted)
        })
    }

    fn reserve<'a>(
        &'a self,
        dir: &'a str,
        writer: &'a str,
    ) -> BoxFuture<'a, StoreResult<Reservation>> {
        Box::pin(async move {
            let key = format!("{dir}{WRITER}");
            let step = || format!("reserving {dir}");
            let taken = |w: Option<String>| Ok(Reservation::Taken { writer: w });
            // A marker already there: taken, whatever the server can do.
            if self
                .head(&key)
                .await
                .map_err(|e| e.within(step()))?
                .is_some()
            {
                return taken(self.writer(dir).await.ok().flatten());
            }
            match self
                .conditional_put(&key, Bytes::from(writer.to_owned()), false)
                .await
            {
                Ok(()) => {}
                Err(Cause::Exists { .. }) => return taken(self.writer(dir).await.ok().flatten()),
                Err(c) => return Err(c.during(step())),
            }
            // A server that ignores conditional writes wrote it anyway: the
            // marker must say us, or another run won the race.
            match self.writer(dir).await.map_err(|e| e.within(step()))? {
                Some(w) if w == writer => Ok(Reservation::Ours),
                other => taken(other),
            }
        })
    }

    fn release<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            // The marker is written unlocked (a bucket's default retention
            // may lock it anyway: then it stays until retention can clean it).
            self.delete(&format!("{dir}{WRITER}")).await.map(drop)
        })
    }

    fn put_new<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(async move {
            self.conditional_put(key, body, true)
                .await
                .map_err(|c| c.during(format!("writing {key}")))
        })
    }

    fn set_legal_hold<'a>(&'a self, key: &'a str, on: bool) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            // Legal holds exist only in buckets with Object Lock, which this
            // destination says it has by locking what it writes.
            if self.cfg.object_lock_days == 0 {
                return Ok(false);
            }
            let body = Bytes::from(xml::to_xml(&xml::LegalHold::new(on)));
            let q = [("legal-hold", "")];
            let mut req = Request::new(Method::PUT, key, &q);
            req.headers.push(("content-md5", content_md5(&body)));
            req.body = body;
            self.exchange(&req).await.map_err(|c| {
                c.during(format!(
                    "turning the legal hold of {key} {}",
                    if on { "on" } else { "off" }
                ))
            })?;
            Ok(true)
        })
    }

    fn legal_hold<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<bool>> {
        Box::pin(async move {
            Ok(self
                .head(key)
                .await?
                .and_then(|h| header(&h, "x-amz-object-lock-legal-hold"))
                .is_some_and(|v| v.eq_ignore_ascii_case("ON")))
        })
    }

    fn locked_until<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move {
            // moto's GetObjectRetention is broken; HEAD carries the same date.
            Ok(self
                .head(key)
                .await?
                .and_then(|h| header(&h, "x-amz-object-lock-retain-until-date")))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Deleted>> {
        Box::pin(async move {
            // In a versioned (Object Lock) bucket a plain DELETE only adds a
            // delete marker; deleting the version itself is what retention
            // means, and it is what the server refuses while the lock holds.
            let Some(head) = self.head(key).await? else {
                return Ok(Deleted::Absent);
            };
            let version = header(&head, "x-amz-version-id").filter(|v| v != "null");
            let q: Vec<(&str, &str)> = version.iter().map(|v| ("versionId", v.as_str())).collect();
            match self.t.send(&Request::new(Method::DELETE, key, &q)).await {
                Ok(_) => Ok(Deleted::Deleted),
                Err(Cause::Refused { status: 403, .. }) => Ok(Deleted::Locked),
                Err(Cause::NotFound { .. }) => Ok(Deleted::Absent),
                Err(c) => Err(c.during(format!("deleting {key}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_ends_on_its_last_page() {
        let mut p = Paging::new(10);
        assert_eq!(p.next(true, Some("a".into())), Ok(Some("a".into())));
        assert_eq!(p.next(true, Some("b".into())), Ok(Some("b".into())));
        assert_eq!(p.next(false, None), Ok(None));
    }

    #[test]
    fn a_listing_that_repeats_its_token_fails() {
        let mut p = Paging::new(10);
        p.next(true, Some("same".into())).unwrap();
        let e = p.next(true, Some("same".into())).unwrap_err();
        assert!(e.contains("continuation token did not change"), "{e}");
    }

    #[test]
    fn a_truncated_page_without_a_token_fails() {
        let mut p = Paging::new(10);
        assert!(p.next(true, None).is_err());
        assert!(Paging::new(10).next(true, Some(String::new())).is_err());
    }

    #[test]
    fn a_listing_that_never_ends_fails_at_the_page_limit() {
        let mut p = Paging::new(MAX_LIST_PAGES);
        let mut pages = 0;
        let e = loop {
            pages += 1;
            match p.next(true, Some(format!("t{pages}"))) {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(pages, MAX_LIST_PAGES);
        assert!(e.contains("10000 pages"), "{e}");
        // 1000 keys a page: ten million keys fit.
        assert!(u64::from(MAX_LIST_PAGES) * 1000 >= 10_000_000);
    }
}
