//! SigV4 header signing for S3, by AWS's own signer (`aws-sigv4`, smithy-rs;
//! docs/adr/0003-s3-client.md) with S3's settings: the path is encoded once and
//! not normalised, and the payload's SHA-256, computed by us, travels signed in
//! `x-amz-content-sha256`, so the server checks every byte of a part. Every
//! header we pass is signed (Object Lock headers, Content-MD5, Content-Type).

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use std::time::SystemTime;

/// Signs requests with one key pair for one region.
pub struct Signer {
    identity: Identity,
    region: String,
}

/// One request to sign.
pub struct Signable<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The full URL, already percent-encoded exactly as it will be sent.
    pub url: &'a str,
    /// Headers to sign and send besides `host`, `x-amz-date` and
    /// `x-amz-content-sha256` (lowercase names).
    pub headers: &'a [(&'a str, &'a str)],
    /// Lowercase hex SHA-256 of the body.
    pub payload_sha256: &'a str,
}

impl Signer {
    /// A signer for `region` with this key pair.
    pub fn new(access_key: &str, secret_key: &str, region: &str) -> Self {
        let credentials = aws_credential_types::Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "cloudnx-agent configuration",
        );
        Signer {
            identity: credentials.into(),
            region: region.to_owned(),
        }
    }

    /// The headers to add to the request: `authorization`, `x-amz-date`,
    /// `x-amz-content-sha256`.
    pub fn sign(
        &self,
        req: &Signable<'_>,
        at: SystemTime,
    ) -> Result<Vec<(&'static str, String)>, String> {
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("s3")
            .time(at)
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let signable = SignableRequest::new(
            req.method,
            req.url,
            req.headers.iter().copied(),
            SignableBody::Precomputed(req.payload_sha256.to_owned()),
        )
        .map_err(|e| format!("signing {} {}: {e}", req.method, req.url))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| format!("signing {} {}: {e}", req.method, req.url))?
            .into_parts();
        Ok(instructions
            .into_parts()
            .0
            .into_iter()
            .map(|h| (h.name(), h.value().to_owned()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    //! The four S3 examples of the AWS documentation "Signature Calculations
    //! for the Authorization Header: Transferring Payload in a Single Chunk"
    //! (credentials AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY,
    //! 2013-05-24, us-east-1): a GET with a Range header, a PUT with a body,
    //! a `Date` and a storage class (a `$` in the key), a bare sub-resource
    //! query (`?lifecycle`) and a query with values (`?max-keys=2&prefix=J`).

    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn example(method: &str, url: &str, headers: &[(&str, &str)], payload: &str) -> String {
        let signer = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        );
        // 2013-05-24T00:00:00Z
        let at = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let added = signer
            .sign(
                &Signable {
                    method,
                    url,
                    headers,
                    payload_sha256: payload,
                },
                at,
            )
            .unwrap();
        let get = |name: &str| {
            added
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {name} among {added:?}"))
        };
        assert_eq!(get("x-amz-date"), "20130524T000000Z");
        assert_eq!(get("x-amz-content-sha256"), payload);
        get("authorization")
    }

    fn auth(signed_headers: &str, signature: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders={signed_headers}, Signature={signature}"
        )
    }

    #[test]
    fn get_object_with_a_range_matches_the_aws_documentation() {
        assert_eq!(
            example(
                "GET",
                "https://examplebucket.s3.amazonaws.com/test.txt",
                &[("range", "bytes=0-9")],
                EMPTY_SHA256
            ),
            auth(
                "host;range;x-amz-content-sha256;x-amz-date",
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            )
        );
    }

    #[test]
    fn put_object_with_a_payload_matches_the_aws_documentation() {
        // SHA-256 of "Welcome to Amazon S3."
        let payload = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
        assert_eq!(
            example(
                "PUT",
                "https://examplebucket.s3.amazonaws.com/test%24file.text",
                &[
                    ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ],
                payload
            ),
            auth(
                "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
            )
        );
    }

    #[test]
    fn a_sub_resource_query_matches_the_aws_documentation() {
        assert_eq!(
            example(
                "GET",
                "https://examplebucket.s3.amazonaws.com/?lifecycle",
                &[],
                EMPTY_SHA256
            ),
            auth(
                "host;x-amz-content-sha256;x-amz-date",
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
            )
        );
    }

    #[test]
    fn a_list_query_matches_the_aws_documentation() {
        assert_eq!(
            example(
                "GET",
                "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
                &[],
                EMPTY_SHA256
            ),
            auth(
                "host;x-amz-content-sha256;x-amz-date",
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            )
        );
    }

    /// Not from the documentation: what this agent sends most, checked
    /// against an independent implementation of the algorithm (Python's
    /// hmac/hashlib over the canonical request of the AWS specification).
    #[test]
    fn object_lock_and_checksum_headers_are_signed_and_a_port_is_part_of_the_host() {
        let got = example(
            "POST",
            "http://127.0.0.1:9000/bucket/a%20b/app.dump.pgp?uploads",
            &[
                ("x-amz-object-lock-mode", "COMPLIANCE"),
                (
                    "x-amz-object-lock-retain-until-date",
                    "2026-12-01T00:00:00Z",
                ),
                ("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
            ],
            EMPTY_SHA256,
        );
        assert_eq!(
            got,
            auth(
                "content-md5;host;x-amz-content-sha256;x-amz-date;\
                 x-amz-object-lock-mode;x-amz-object-lock-retain-until-date",
                "df2a47a5c506dfb5c8c5885aa56b66f451597a2abd1cbf4e6f8be99a4800370d"
            )
        );
    }
}
