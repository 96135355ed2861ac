//! Any S3-compatible API (MinIO, Backblaze B2, Hetzner Object Storage, AWS) as
//! a destination (see docs/adr/0003-s3-client.md): SigV4 header signing, path-
//! style or virtual-host addressing, streaming multipart upload with a bounded
//! number of parts in flight, a signed SHA-256 on every part (the server
//! recomputes it and refuses a part that does not match; parts of a locked
//! object also carry the Content-MD5 S3 demands there), Object Lock
//! COMPLIANCE headers, abort on failure, HEAD to confirm sizes,
//! ListObjectsV2 and version-aware deletes (a locked version is refused by the
//! server and reported as [`Deleted::Locked`]).

use super::{Deleted, Destination, Feed, ObjectInfo};
use crate::config::S3Destination;
use anyhow::{bail, Context};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hmac::{Hmac, Mac};
use md5::Md5;
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// An S3 bucket as a destination.
pub struct S3Store {
    name: String,
    cfg: S3Destination,
    access_key: String,
    secret_key: String,
    http: reqwest::Client,
    max_in_flight: usize,
}

/// An error answer from the S3 API.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status} {code}: {message}")]
pub struct S3Error {
    /// HTTP status.
    pub status: StatusCode,
    /// S3 error code (`AccessDenied`, `SlowDown`, …).
    pub code: String,
    /// The server's message.
    pub message: String,
}

/// Attempts per request for retryable failures (5xx, network).
const ATTEMPTS: u32 = 3;

impl S3Store {
    /// Open a bucket; reads the credentials from their secret files.
    pub fn new(name: &str, cfg: &S3Destination, max_in_flight: usize) -> anyhow::Result<Self> {
        let read = |p: &std::path::Path| -> anyhow::Result<String> {
            let s = std::fs::read_to_string(p)
                .with_context(|| format!("reading the S3 credential file {}", p.display()))?;
            let s = s.trim().to_owned();
            if s.is_empty() {
                bail!("the S3 credential file {} is empty", p.display());
            }
            Ok(s)
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(600))
            .build()
            .context("building the HTTP client")?;
        Ok(S3Store {
            name: name.to_owned(),
            cfg: cfg.clone(),
            access_key: read(&cfg.access_key_id_file)?,
            secret_key: read(&cfg.secret_access_key_file)?,
            http,
            max_in_flight: max_in_flight.max(1),
        })
    }

    /// URL (scheme://host[:port]/path) and canonical URI of a key ("" = the bucket).
    fn target(&self, key: &str) -> anyhow::Result<(reqwest::Url, String)> {
        let base = reqwest::Url::parse(&self.cfg.endpoint)
            .with_context(|| format!("parsing the endpoint {:?}", self.cfg.endpoint))?;
        let base_path = base.path().trim_end_matches('/').to_owned();
        let enc_key = uri_encode(key, false);
        let (mut url, path) = if self.cfg.path_style {
            let path = if key.is_empty() {
                format!("{base_path}/{}", self.cfg.bucket)
            } else {
                format!("{base_path}/{}/{enc_key}", self.cfg.bucket)
            };
            (base, path)
        } else {
            let mut u = base;
            let host = format!("{}.{}", self.cfg.bucket, u.host_str().unwrap_or_default());
            u.set_host(Some(&host))
                .with_context(|| format!("virtual-host address {host}"))?;
            (u, format!("{base_path}/{enc_key}"))
        };
        url.set_path(&path);
        Ok((url, path))
    }

    /// Send one signed request; returns the response if 2xx, else an [`S3Error`].
    async fn send(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Bytes,
    ) -> anyhow::Result<reqwest::Response> {
        let (mut url, path) = self.target(key)?;
        let mut q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        q.sort();
        let canonical_query = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let url_query = q
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        url.set_query(if url_query.is_empty() {
            None
        } else {
            Some(&url_query)
        });
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let payload_hash = hex::encode(Sha256::digest(&body));
        let now = chrono::Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let mut h: BTreeMap<String, String> = BTreeMap::new();
        h.insert("host".into(), host);
        h.insert("x-amz-date".into(), amz_date.clone());
        h.insert("x-amz-content-sha256".into(), payload_hash.clone());
        for (k, v) in headers {
            h.insert(k.to_ascii_lowercase(), v.trim().to_owned());
        }
        let auth = sigv4(
            &SigInput {
                method: method.as_str(),
                path: &path,
                query: &canonical_query,
                headers: &h,
                payload_hash: &payload_hash,
                region: &self.cfg.region,
                access_key: &self.access_key,
                secret_key: &self.secret_key,
            },
            &amz_date,
        );
        let mut req = self.http.request(method, url);
        for (k, v) in &h {
            if k != "host" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        req = req.header("authorization", auth).body(body);
        let resp = req.send().await.map_err(|e| {
            anyhow::anyhow!(
                "{} unreachable: {e}{}",
                self.cfg.endpoint,
                std::error::Error::source(&e)
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            )
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Err(S3Error {
            status,
            code: xml_tag(&text, "Code").unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .replace(' ', "")
            }),
            message: xml_tag(&text, "Message").unwrap_or_default(),
        }
        .into())
    }

    /// [`Self::send`] with retries for 5xx and network failures.
    async fn send_retrying(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, String)],
        body: Bytes,
    ) -> anyhow::Result<reqwest::Response> {
        let mut attempt = 1;
        loop {
            match self
                .send(method.clone(), key, query, headers, body.clone())
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    tracing::warn!(destination = %self.name, "retrying {method} {key}: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
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
    ) -> anyhow::Result<()> {
        let body = Bytes::from(format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode><RetainUntilDate>{until}</RetainUntilDate></Retention>"
        ));
        let mut q = vec![("retention", "")];
        if let Some(v) = version {
            q.push(("versionId", v));
        }
        let md5 = content_md5(&body);
        self.send_retrying(Method::PUT, key, &q, &[("content-md5", md5)], body)
            .await
            .with_context(|| format!("setting COMPLIANCE retention until {until} on {key}"))?;
        Ok(())
    }

    async fn multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &mut mpsc::Receiver<Feed>,
    ) -> anyhow::Result<(u64, Option<String>)> {
        let mut in_flight = FuturesUnordered::new();
        let mut etags: Vec<(u32, String)> = Vec::new();
        let mut size = 0u64;
        let mut next = 1u32;
        let mut ended = false;
        loop {
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    let done: anyhow::Result<(u32, String)> = done;
                    etags.push(done?);
                }
                feed = parts.recv(), if !ended && in_flight.len() < self.max_in_flight => match feed {
                    Some(Feed::Part(b)) => {
                        let n = next;
                        next += 1;
                        size += b.len() as u64;
                        in_flight.push(self.upload_part(key, upload_id, n, b));
                    }
                    Some(Feed::End) => ended = true,
                    None => bail!("the stream ended before the object was complete"),
                },
                else => break,
            }
        }
        if etags.is_empty() {
            // An empty stream still makes a (zero-length) object.
            etags.push(self.upload_part(key, upload_id, 1, Bytes::new()).await?);
        }
        etags.sort();
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in &etags {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let body = Bytes::from(xml);
        let md5 = content_md5(&body);
        let resp = self
            .send_retrying(
                Method::POST,
                key,
                &[("uploadId", upload_id)],
                &[("content-md5", md5)],
                body,
            )
            .await
            .context("completing the multipart upload")?;
        let version = resp
            .headers()
            .get("x-amz-version-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // S3 may answer 200 and still fail the completion in the body.
        let text = resp.text().await.unwrap_or_default();
        if text.contains("<Error>") {
            bail!(
                "completing the multipart upload: {} {}",
                xml_tag(&text, "Code").unwrap_or_default(),
                xml_tag(&text, "Message").unwrap_or_default()
            );
        }
        Ok((size, version))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u32,
        body: Bytes,
    ) -> anyhow::Result<(u32, String)> {
        // The signed x-amz-content-sha256 already makes the server check every
        // byte of the part; S3 additionally demands Content-MD5 (or a flexible
        // checksum) on uploads to an Object Lock retention, and only there is
        // the second hash over the part worth its CPU.
        let headers = if self.cfg.object_lock_days > 0 {
            vec![("content-md5", content_md5(&body))]
        } else {
            Vec::new()
        };
        let len = body.len();
        let ns = n.to_string();
        let resp = self
            .send_retrying(
                Method::PUT,
                key,
                &[("partNumber", &ns), ("uploadId", upload_id)],
                &headers,
                body,
            )
            .await
            .with_context(|| format!("uploading part {n} ({len} bytes) of {key}"))?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .with_context(|| format!("part {n} of {key}: the server returned no ETag"))?
            .to_owned();
        Ok((n, etag))
    }

    async fn head(&self, key: &str) -> anyhow::Result<Option<reqwest::Response>> {
        match self
            .send_retrying(Method::HEAD, key, &[], &[], Bytes::new())
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.downcast_ref::<S3Error>().is_some_and(|s| s.status == 404) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn retryable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<S3Error>() {
        // 501: the server does not have the operation; asking again will not help.
        Some(s) => {
            (s.status.is_server_error() && s.status != StatusCode::NOT_IMPLEMENTED)
                || s.status == StatusCode::TOO_MANY_REQUESTS
        }
        None => true,
    }
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
    ) -> BoxFuture<'a, anyhow::Result<u64>> {
        Box::pin(async move {
            let until = self.lock_until();
            let resp = self
                .send_retrying(
                    Method::POST,
                    key,
                    &[("uploads", "")],
                    &Self::lock_headers(until.as_deref()),
                    Bytes::new(),
                )
                .await
                .with_context(|| format!("starting the multipart upload of {key}"))?;
            let text = resp.text().await.unwrap_or_default();
            let upload_id = xml_tag(&text, "UploadId").with_context(|| {
                format!("starting the multipart upload of {key}: no UploadId in the answer")
            })?;
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
                    if let Err(abort) = self
                        .send_retrying(
                            Method::DELETE,
                            key,
                            &[("uploadId", &upload_id)],
                            &[],
                            Bytes::new(),
                        )
                        .await
                    {
                        tracing::warn!(destination = %self.name, "aborting the multipart upload of {key}: {abort:#}");
                    }
                    Err(e)
                }
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut headers = Self::lock_headers(self.lock_until().as_deref());
            headers.push(("content-md5", content_md5(&body)));
            headers.push(("content-type", "application/json".into()));
            self.send_retrying(Method::PUT, key, &[], &headers, body)
                .await
                .with_context(|| format!("writing {key}"))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Bytes>> {
        Box::pin(async move {
            let r = self
                .send_retrying(Method::GET, key, &[], &[], Bytes::new())
                .await
                .with_context(|| format!("reading {key}"))?;
            r.bytes().await.with_context(|| format!("reading {key}"))
        })
    }

    fn fetch<'a>(
        &'a self,
        key: &'a str,
        to: std::fs::File,
    ) -> BoxFuture<'a, anyhow::Result<(u64, String)>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let r = self
                .send_retrying(Method::GET, key, &[], &[], Bytes::new())
                .await
                .with_context(|| format!("downloading {key}"))?;
            let mut file = tokio::fs::File::from_std(to);
            let mut hash = Sha256::new();
            let mut n = 0u64;
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.with_context(|| format!("downloading {key}"))?;
                hash.update(&chunk);
                n += chunk.len() as u64;
                file.write_all(&chunk)
                    .await
                    .with_context(|| format!("passing on what was downloaded of {key}"))?;
            }
            file.flush().await?;
            Ok((n, hex::encode(hash.finalize())))
        })
    }

    fn size<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Option<u64>>> {
        Box::pin(async move {
            let Some(r) = self
                .head(key)
                .await
                .with_context(|| format!("HEAD {key}"))?
            else {
                return Ok(None);
            };
            let len = r
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("HEAD {key}: no Content-Length"))?;
            Ok(Some(len))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, anyhow::Result<Vec<ObjectInfo>>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let mut q = vec![("list-type", "2"), ("prefix", prefix)];
                if let Some(t) = &token {
                    q.push(("continuation-token", t));
                }
                let text = self
                    .send_retrying(Method::GET, "", &q, &[], Bytes::new())
                    .await
                    .with_context(|| format!("listing {prefix}"))?
                    .text()
                    .await
                    .with_context(|| format!("listing {prefix}"))?;
                for c in xml_blocks(&text, "Contents") {
                    let key = xml_tag(c, "Key").context("listing: an entry without Key")?;
                    let size = xml_tag(c, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                    out.push(ObjectInfo { key, size });
                }
                if xml_tag(&text, "IsTruncated").as_deref() == Some("true") {
                    token = xml_tag(&text, "NextContinuationToken");
                    if token.is_none() {
                        bail!("listing {prefix}: truncated answer without a continuation token");
                    }
                } else {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn abort_stale_uploads<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Box::pin(async move {
            let listed = self
                .send_retrying(
                    Method::GET,
                    "",
                    &[("uploads", ""), ("prefix", prefix)],
                    &[],
                    Bytes::new(),
                )
                .await;
            // Some S3-compatible servers do not implement ListMultipartUploads
            // (501). The cleanup is housekeeping: it must not fail a backup
            // that succeeded. Say so, so the operator can set a bucket
            // lifecycle rule (AbortIncompleteMultipartUpload) instead.
            if let Err(e) = &listed {
                if e.downcast_ref::<S3Error>()
                    .is_some_and(|s| s.status == StatusCode::NOT_IMPLEMENTED)
                {
                    tracing::warn!(
                        destination = %self.name,
                        "this S3 server does not list unfinished multipart uploads ({e:#}); uploads a killed run left open are not aborted here: add a lifecycle rule AbortIncompleteMultipartUpload to the bucket"
                    );
                    return Ok(Vec::new());
                }
            }
            let text = listed
                .with_context(|| format!("listing unfinished multipart uploads under {prefix}"))?
                .text()
                .await
                .with_context(|| format!("listing unfinished multipart uploads under {prefix}"))?;
            let mut aborted = Vec::new();
            for u in xml_blocks(&text, "Upload") {
                let (Some(key), Some(id)) = (xml_tag(u, "Key"), xml_tag(u, "UploadId")) else {
                    continue;
                };
                self.send_retrying(
                    Method::DELETE,
                    &key,
                    &[("uploadId", &id)],
                    &[],
                    Bytes::new(),
                )
                .await
                .with_context(|| format!("aborting the unfinished multipart upload of {key}"))?;
                aborted.push(key);
            }
            Ok(aborted)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, anyhow::Result<Deleted>> {
        Box::pin(async move {
            // In a versioned (Object Lock) bucket a plain DELETE only adds a
            // delete marker; deleting the version itself is what retention
            // means, and it is what the server refuses while the lock holds.
            let Some(head) = self
                .head(key)
                .await
                .with_context(|| format!("HEAD {key}"))?
            else {
                return Ok(Deleted::Absent);
            };
            let version = head
                .headers()
                .get("x-amz-version-id")
                .and_then(|v| v.to_str().ok())
                .filter(|v| *v != "null")
                .map(str::to_owned);
            let q: Vec<(&str, &str)> = version.iter().map(|v| ("versionId", v.as_str())).collect();
            match self
                .send_retrying(Method::DELETE, key, &q, &[], Bytes::new())
                .await
            {
                Ok(_) => Ok(Deleted::Deleted),
                Err(e)
                    if e.downcast_ref::<S3Error>()
                        .is_some_and(|s| s.status == StatusCode::FORBIDDEN) =>
                {
                    Ok(Deleted::Locked)
                }
                Err(e) => Err(e).with_context(|| format!("deleting {key}")),
            }
        })
    }
}

struct SigInput<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a BTreeMap<String, String>,
    payload_hash: &'a str,
    region: &'a str,
    access_key: &'a str,
    secret_key: &'a str,
}

/// The AWS Signature Version 4 `Authorization` header value.
fn sigv4(s: &SigInput<'_>, amz_date: &str) -> String {
    let date = &amz_date[..8];
    let canonical_headers: String = s
        .headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}\n"))
        .collect();
    let signed_headers = s.headers.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        s.method, s.path, s.query, canonical_headers, signed_headers, s.payload_hash
    );
    let scope = format!("{date}/{}/s3/aws4_request", s.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{}", s.secret_key).as_bytes(), date.as_bytes());
    let k = hmac(&k, s.region.as_bytes());
    let k = hmac(&k, b"s3");
    let k = hmac(&k, b"aws4_request");
    let sig = hex::encode(hmac(&k, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={sig}",
        s.access_key
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// S3's URI encoding: unreserved characters stay, everything else is %XX;
/// `/` stays in paths (`slash_too` = false) and is encoded in query values.
fn uri_encode(s: &str, slash_too: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if !slash_too => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The text of the first `<tag>…</tag>` in `xml`, unescaped.
fn xml_tag(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml_unescape(&xml[start..end]))
}

/// Every `<tag>…</tag>` block's inner text (raw).
fn xml_blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the AWS documentation "Signature Calculations for the
    /// Authorization Header" (GET Object with a Range header).
    #[test]
    fn sigv4_matches_the_aws_documentation_example() {
        let mut h = BTreeMap::new();
        h.insert(
            "host".to_owned(),
            "examplebucket.s3.amazonaws.com".to_owned(),
        );
        h.insert("range".to_owned(), "bytes=0-9".to_owned());
        h.insert(
            "x-amz-content-sha256".to_owned(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
        );
        h.insert("x-amz-date".to_owned(), "20130524T000000Z".to_owned());
        let auth = sigv4(
            &SigInput {
                method: "GET",
                path: "/test.txt",
                query: "",
                headers: &h,
                payload_hash: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                region: "us-east-1",
                access_key: "AKIAIOSFODNN7EXAMPLE",
                secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            },
            "20130524T000000Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn keys_are_uri_encoded_like_s3_expects() {
        assert_eq!(uri_encode("a b/ü+c", false), "a%20b/%C3%BC%2Bc");
        assert_eq!(uri_encode("x/y=", true), "x%2Fy%3D");
    }

    #[test]
    fn xml_answers_are_read_with_entities() {
        let x = "<R><Contents><Key>a&amp;b</Key><Size>3</Size></Contents><Contents><Key>c</Key></Contents><IsTruncated>false</IsTruncated></R>";
        let blocks = xml_blocks(x, "Contents");
        assert_eq!(blocks.len(), 2);
        assert_eq!(xml_tag(blocks[0], "Key").as_deref(), Some("a&b"));
        assert_eq!(xml_tag(x, "IsTruncated").as_deref(), Some("false"));
        assert_eq!(xml_tag(x, "Missing"), None);
    }
}
