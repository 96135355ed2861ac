//! One S3 request on the wire: the address (path-style or virtual host), the
//! signature ([`super::sign`]), retries of transient failures (5xx but 501,
//! 429, a broken or silent connection), timeouts, the job's cancellation, and
//! answers read with a size cap.
//!
//! Timeouts (docs/adr/0003-s3-client.md): a connection must be made within
//! [`CONNECT_TIMEOUT`]; a request's answer must begin within [`Limits::idle`]
//! after its body could have been sent at [`Limits::min_upload_rate`]; a
//! streamed answer (a multi-GiB download) may take as long as it takes but
//! never falls silent for longer than `idle`; a small answer (XML, a manifest)
//! must arrive whole within [`Limits::answer_deadline`]. Every wait races the
//! job's cancellation token, so SIGTERM ends a request whatever the peer does.

use super::sign::{Signable, Signer};
use super::xml;
use crate::store::Cause;
use bytes::{Bytes, BytesMut};
use reqwest::{Method, Response, StatusCode, Url};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a TCP (and TLS) connection may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an error answer that is read for its code and message.
const ERROR_ANSWER_LIMIT: u64 = 64 << 10;

/// The transport's patience.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest silence waited for: the start of an answer, or its next piece.
    pub idle: Duration,
    /// Slowest upload still waited for (bytes per second): a request body
    /// of N bytes adds N / this to the wait for the answer's start.
    pub min_upload_rate: u64,
    /// Longest a small answer read whole may take (S3 may trickle whitespace
    /// for minutes while it completes a large multipart upload).
    pub answer_deadline: Duration,
    /// Attempts per request for transient failures.
    pub attempts: u32,
    /// Pause before the second attempt; the n-th waits n times this.
    pub backoff: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(60),
            min_upload_rate: 64 << 10,
            answer_deadline: Duration::from_secs(600),
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

/// Where and how requests go.
pub struct Transport {
    http: reqwest::Client,
    signer: Signer,
    /// The endpoint as configured (messages name it).
    endpoint: String,
    min_tls: crate::tls_floor::TlsFloor,
    base: Url,
    bucket: String,
    path_style: bool,
    cancel: CancellationToken,
    limits: Limits,
}

/// One request: method, key ("" = the bucket), query, extra signed headers, body.
#[derive(Clone)]
pub struct Request<'a> {
    /// HTTP method.
    pub method: Method,
    /// Object key, or "" for the bucket.
    pub key: &'a str,
    /// Query parameters (unencoded; a sub-resource has an empty value).
    pub query: &'a [(&'a str, &'a str)],
    /// Headers to sign and send (lowercase names).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Bytes,
}

impl<'a> Request<'a> {
    /// A request without headers or body.
    pub fn new(method: Method, key: &'a str, query: &'a [(&'a str, &'a str)]) -> Self {
        Request {
            method,
            key,
            query,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// Everything [`Transport::new`] needs besides the client.
pub struct Target<'a> {
    /// Endpoint URL as configured.
    pub endpoint: &'a str,
    /// Bucket.
    pub bucket: &'a str,
    /// Path-style addressing (else virtual host).
    pub path_style: bool,
    /// SigV4 region.
    pub region: &'a str,
    /// Access key id.
    pub access_key: &'a str,
    /// Secret access key.
    pub secret_key: &'a str,
    /// The lowest TLS version accepted from an `https://` endpoint.
    pub min_tls: crate::tls_floor::TlsFloor,
    /// PEM certificates trusted besides the public roots.
    pub ca_pem: Option<&'a [u8]>,
}

impl Transport {
    /// A transport to `target` whose waits end when `cancel` fires.
    pub fn new(
        target: &Target<'_>,
        cancel: CancellationToken,
        limits: Limits,
    ) -> Result<Self, Cause> {
        let base = Url::parse(target.endpoint).map_err(|e| {
            Cause::Setup(format!(
                "the endpoint {:?} is not a URL: {e}",
                target.endpoint
            ))
        })?;
        let mut builder = target.min_tls.apply(reqwest::Client::builder());
        if let Some(pem) = target.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Cause::Setup(format!("the ca_file is not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return Err(Cause::Setup("the ca_file holds no certificate".into()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| Cause::Setup(format!("building the HTTP client: {e}")))?;
        Ok(Transport {
            http,
            signer: Signer::new(target.access_key, target.secret_key, target.region),
            endpoint: target.endpoint.to_owned(),
            min_tls: target.min_tls,
            base,
            bucket: target.bucket.to_owned(),
            path_style: target.path_style,
            cancel,
            limits,
        })
    }

    /// The endpoint as configured.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Send `req`, retrying transient failures; a 2xx answer is returned
    /// (its body unread), anything else is the server's error as a [`Cause`].
    pub async fn send(&self, req: &Request<'_>) -> Result<Response, Cause> {
        let payload_sha256 = hex::encode(Sha256::digest(&req.body));
        let mut attempt = 1;
        loop {
            let r = self.cancellable(self.once(req, &payload_sha256)).await;
            match r {
                Err(c) if attempt < self.limits.attempts && c.is_transient() => {
                    tracing::warn!(endpoint = %self.endpoint, "retrying {} {}: {c}", req.method, req.key);
                    self.cancellable(async {
                        tokio::time::sleep(self.limits.backoff * attempt).await;
                        Ok(())
                    })
                    .await?;
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Send `req` to clean up after a failure: as [`Self::send`] while the job
    /// runs; once the job is cancelled, a single attempt that is not itself
    /// cancelled but ends within `deadline` (freeing the server's storage is
    /// worth a moment of the shutdown grace, not more).
    pub async fn send_cleanup(
        &self,
        req: &Request<'_>,
        deadline: Duration,
    ) -> Result<Response, Cause> {
        if !self.cancel.is_cancelled() {
            match self.send(req).await {
                Err(Cause::Cancelled) => {}
                r => return r,
            }
        }
        let payload_sha256 = hex::encode(Sha256::digest(&req.body));
        tokio::time::timeout(deadline, self.once(req, &payload_sha256))
            .await
            .unwrap_or_else(|_| Err(self.timed_out(deadline)))
    }

    /// Read a small answer whole: at most `limit` bytes, within the idle
    /// timeout per piece and the answer deadline overall. A longer answer is
    /// [`Cause::TooLarge`] and is not read beyond the limit.
    pub async fn answer(&self, resp: Response, limit: u64) -> Result<Bytes, Cause> {
        let deadline = self.limits.answer_deadline;
        let read = self.read_capped(resp, limit);
        self.cancellable(async {
            tokio::time::timeout(deadline, read)
                .await
                .unwrap_or_else(|_| Err(self.timed_out(deadline)))
        })
        .await
    }

    /// The next piece of a streamed answer (None at its end): within the
    /// idle timeout, cancellable.
    pub async fn chunk(&self, resp: &mut Response) -> Result<Option<Bytes>, Cause> {
        self.cancellable(self.idle_chunk(resp)).await
    }

    async fn read_capped(&self, mut resp: Response, limit: u64) -> Result<Bytes, Cause> {
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(self.too_large(limit));
        }
        let mut body = BytesMut::new();
        while let Some(piece) = self.idle_chunk(&mut resp).await? {
            if (body.len() + piece.len()) as u64 > limit {
                return Err(self.too_large(limit));
            }
            body.extend_from_slice(&piece);
        }
        Ok(body.freeze())
    }

    async fn idle_chunk(&self, resp: &mut Response) -> Result<Option<Bytes>, Cause> {
        match tokio::time::timeout(self.limits.idle, resp.chunk()).await {
            Err(_) => Err(self.timed_out(self.limits.idle)),
            Ok(r) => r.map_err(|e| self.unreachable(&e)),
        }
    }

    async fn cancellable<T>(&self, f: impl Future<Output = Result<T, Cause>>) -> Result<T, Cause> {
        if self.cancel.is_cancelled() {
            return Err(Cause::Cancelled);
        }
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Cause::Cancelled),
            r = f => r,
        }
    }

    /// One attempt: sign, send, wait for the answer's start.
    async fn once(&self, req: &Request<'_>, payload_sha256: &str) -> Result<Response, Cause> {
        let url = self.url(req.key, req.query)?;
        let headers: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (*k, v.trim())).collect();
        let signed = self
            .signer
            .sign(
                &Signable {
                    method: req.method.as_str(),
                    url: url.as_str(),
                    headers: &headers,
                    payload_sha256,
                },
                std::time::SystemTime::now(),
            )
            .map_err(Cause::Setup)?;
        let mut builder = self.http.request(req.method.clone(), url);
        for (k, v) in headers {
            builder = builder.header(k, v);
        }
        for (k, v) in signed {
            builder = builder.header(k, v);
        }
        let body_len = req.body.len() as u64;
        let wait =
            self.limits.idle + Duration::from_secs(body_len / self.limits.min_upload_rate.max(1));
        let resp = match tokio::time::timeout(wait, builder.body(req.body.clone()).send()).await {
            Err(_) => return Err(self.timed_out(wait)),
            Ok(Err(e)) => return Err(self.unreachable(&e)),
            Ok(Ok(r)) => r,
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        // The error document says why; a HEAD (or a proxy) may send none.
        let text = if req.method == Method::HEAD {
            Bytes::new()
        } else {
            tokio::time::timeout(self.limits.idle, self.read_capped(resp, ERROR_ANSWER_LIMIT))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        };
        Err(refusal(status, &text))
    }

    /// URL of a key ("" = the bucket) with `query`, percent-encoded as S3
    /// signs it: each byte outside the unreserved set once, `/` kept in the path.
    fn url(&self, key: &str, query: &[(&str, &str)]) -> Result<Url, Cause> {
        let mut url = self.base.clone();
        let base_path = url.path().trim_end_matches('/').to_owned();
        let enc_key = uri_encode(key, false);
        let path = if self.path_style {
            if key.is_empty() {
                format!("{base_path}/{}", self.bucket)
            } else {
                format!("{base_path}/{}/{enc_key}", self.bucket)
            }
        } else {
            let host = format!("{}.{}", self.bucket, url.host_str().unwrap_or_default());
            url.set_host(Some(&host))
                .map_err(|e| Cause::Setup(format!("the virtual-host address {host}: {e}")))?;
            format!("{base_path}/{enc_key}")
        };
        url.set_path(&path);
        let query = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    uri_encode(k, true)
                } else {
                    format!("{}={}", uri_encode(k, true), uri_encode(v, true))
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        Ok(url)
    }

    fn timed_out(&self, after: Duration) -> Cause {
        Cause::TimedOut {
            endpoint: self.endpoint.clone(),
            after,
        }
    }

    fn too_large(&self, limit: u64) -> Cause {
        Cause::TooLarge {
            what: format!("the answer from {}", self.endpoint),
            limit,
        }
    }

    /// Malformed answer from this endpoint.
    pub fn malformed(&self, detail: impl Into<String>) -> Cause {
        Cause::Malformed {
            from: self.endpoint.clone(),
            detail: detail.into(),
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> Cause {
        // A server below the TLS floor is a setup problem, not a blip: no retries.
        if let Some(words) = self.min_tls.explain(&self.endpoint, e) {
            return Cause::Setup(words);
        }
        // reqwest's own message is generic ("error sending request"); the
        // source says what happened (refused, reset, closed mid-body).
        let source = std::error::Error::source(e)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        Cause::Unreachable {
            endpoint: self.endpoint.clone(),
            detail: format!("{e}{source}"),
        }
    }
}

/// A non-2xx answer as a [`Cause`], from its status and error document.
fn refusal(status: StatusCode, body: &[u8]) -> Cause {
    let doc = xml::error_answer(body);
    let code = if doc.code.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .replace(' ', "")
    } else {
        doc.code
    };
    match status {
        StatusCode::NOT_FOUND => Cause::NotFound {
            detail: format!("HTTP 404 {code}: {}", doc.message),
        },
        StatusCode::NOT_IMPLEMENTED => Cause::Unsupported {
            code,
            message: doc.message,
        },
        _ => Cause::Refused {
            status: status.as_u16(),
            code,
            message: doc.message,
        },
    }
}

/// S3's URI encoding: unreserved characters stay, every other byte is %XX;
/// `/` stays in paths (`slash_too` = false) and is encoded in query parts.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn transport(endpoint: &str, path_style: bool, limits: Limits) -> Transport {
        Transport::new(
            &Target {
                endpoint,
                bucket: "bkt",
                path_style,
                region: "us-east-1",
                access_key: "k",
                secret_key: "s",
                min_tls: crate::tls_floor::TlsFloor::V1_3,
                ca_pem: None,
            },
            CancellationToken::new(),
            limits,
        )
        .unwrap()
    }

    fn quick() -> Limits {
        Limits {
            idle: Duration::from_millis(300),
            min_upload_rate: 1 << 20,
            answer_deadline: Duration::from_secs(2),
            attempts: 2,
            backoff: Duration::from_millis(10),
        }
    }

    #[test]
    fn keys_are_uri_encoded_like_s3_expects() {
        assert_eq!(uri_encode("a b/ü+c", false), "a%20b/%C3%BC%2Bc");
        assert_eq!(uri_encode("x/y=", true), "x%2Fy%3D");
    }

    #[test]
    fn path_style_and_virtual_host_addresses() {
        let t = transport("http://127.0.0.1:9000/base/", true, Limits::default());
        let u = t
            .url("p/a b.pgp", &[("partNumber", "2"), ("uploadId", "x/y")])
            .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9000/base/bkt/p/a%20b.pgp?partNumber=2&uploadId=x%2Fy"
        );
        assert_eq!(
            t.url("", &[("uploads", ""), ("prefix", "p/")])
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9000/base/bkt?uploads&prefix=p%2F"
        );
        let t = transport("https://s3.example.com", false, Limits::default());
        assert_eq!(
            t.url("k", &[]).unwrap().as_str(),
            "https://bkt.s3.example.com/k"
        );
    }

    #[test]
    fn error_answers_become_causes_callers_can_match() {
        let doc = b"<Error><Code>AccessDenied</Code><Message>locked</Message></Error>";
        assert!(matches!(
            refusal(StatusCode::FORBIDDEN, doc),
            Cause::Refused { status: 403, ref code, ref message } if code == "AccessDenied" && message == "locked"
        ));
        assert!(matches!(
            refusal(StatusCode::NOT_IMPLEMENTED, b""),
            Cause::Unsupported { ref code, .. } if code == "NotImplemented"
        ));
        assert!(matches!(
            refusal(StatusCode::NOT_FOUND, b""),
            Cause::NotFound { .. }
        ));
        assert_eq!(
            refusal(StatusCode::INTERNAL_SERVER_ERROR, b"").to_string(),
            "HTTP 500 InternalServerError: "
        );
    }

    /// A loopback server that reads each request and then does `answer`
    /// with the connection; returns its endpoint and how many requests came.
    fn server(
        answer: impl Fn(&mut std::net::TcpStream) + Send + Sync + 'static,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if conn.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    answer(&mut conn);
                });
            }
        });
        (endpoint, count)
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out_after_the_retries() {
        let (endpoint, count) = server(|conn| {
            // Hold the connection, say nothing.
            let mut sink = [0u8; 64];
            while conn.read(&mut sink).unwrap_or(0) > 0 {}
        });
        let t = transport(&endpoint, true, quick());
        let started = std::time::Instant::now();
        let e = t
            .send(&Request::new(Method::GET, "k", &[]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Cause::TimedOut { .. }),
            "{e}: a silent server is a timeout"
        );
        assert!(e.to_string().contains(&endpoint), "{e}");
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn cancellation_ends_a_request_the_server_never_answers() {
        let (endpoint, _) = server(|conn| {
            let mut sink = [0u8; 64];
            while conn.read(&mut sink).unwrap_or(0) > 0 {}
        });
        let mut limits = quick();
        limits.idle = Duration::from_secs(600);
        let t = transport(&endpoint, true, limits);
        let cancel = t.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let e = t
            .send(&Request::new(Method::GET, "k", &[]))
            .await
            .unwrap_err();
        assert!(matches!(e, Cause::Cancelled), "{e}");
        // And nothing more is sent once cancelled.
        let e = t
            .send(&Request::new(Method::GET, "k", &[]))
            .await
            .unwrap_err();
        assert!(matches!(e, Cause::Cancelled), "{e}");
    }

    #[tokio::test]
    async fn an_oversized_answer_is_refused_at_the_limit_whatever_its_framing() {
        // Announced by Content-Length: refused before a byte is read.
        let (endpoint, _) = server(|conn| {
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n<ListBucketResult>",
            );
            std::thread::sleep(Duration::from_secs(2));
        });
        let t = transport(&endpoint, true, quick());
        let resp = t.send(&Request::new(Method::GET, "", &[])).await.unwrap();
        let e = t.answer(resp, 1024).await.unwrap_err();
        assert!(matches!(e, Cause::TooLarge { limit: 1024, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!("the answer from {endpoint} exceeds the limit of 1024 bytes")
        );

        // Chunked, without a length: cut at the limit.
        let (endpoint, _) = server(|conn| {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            let piece = [b'a'; 4096];
            for _ in 0..1000 {
                let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                chunk.extend_from_slice(&piece);
                chunk.extend_from_slice(b"\r\n");
                if conn.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let t = transport(&endpoint, true, quick());
        let resp = t.send(&Request::new(Method::GET, "", &[])).await.unwrap();
        let e = t.answer(resp, 10_000).await.unwrap_err();
        assert!(matches!(e, Cause::TooLarge { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_falls_silent_mid_answer_times_out() {
        let (endpoint, _) = server(|conn| {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
            std::thread::sleep(Duration::from_secs(3));
        });
        let t = transport(&endpoint, true, quick());
        let mut resp = t.send(&Request::new(Method::GET, "k", &[])).await.unwrap();
        assert_eq!(
            t.chunk(&mut resp).await.unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        let e = t.chunk(&mut resp).await.unwrap_err();
        assert!(matches!(e, Cause::TimedOut { .. }), "{e}");
    }
}
