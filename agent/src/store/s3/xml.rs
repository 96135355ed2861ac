//! The S3 XML we read and write, as serde types over quick-xml: the answers
//! (`InitiateMultipartUploadResult`, ListObjectsV2's `ListBucketResult`,
//! `ListMultipartUploadsResult`, `CompleteMultipartUploadResult`, `Error`) and
//! the request bodies (`CompleteMultipartUpload`, `Retention`). Fields we do
//! not use are ignored; an answer whose root element is not one of the names
//! expected is refused, and an `<Error>` root is decoded as the server's
//! error (S3 may answer 200 and still fail a completion in the body).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The S3 namespace of request bodies.
const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Answer to CreateMultipartUpload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InitiateMultipartUploadResult {
    /// The upload's id, for its parts, completion and abort.
    pub upload_id: String,
}

/// One page of ListObjectsV2.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListBucketResult {
    /// The objects on this page.
    #[serde(default)]
    pub contents: Vec<ListedObject>,
    /// More pages follow.
    #[serde(default)]
    pub is_truncated: bool,
    /// The token that asks for the next page.
    pub next_continuation_token: Option<String>,
}

/// An object of a [`ListBucketResult`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedObject {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    #[serde(default)]
    pub size: u64,
}

/// One page of ListMultipartUploads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListMultipartUploadsResult {
    /// The unfinished uploads on this page.
    #[serde(default)]
    pub upload: Vec<ListedUpload>,
    /// More pages follow.
    #[serde(default)]
    pub is_truncated: bool,
    /// Where the next page starts (with [`Self::next_upload_id_marker`]).
    pub next_key_marker: Option<String>,
    /// Where the next page starts (with [`Self::next_key_marker`]).
    pub next_upload_id_marker: Option<String>,
}

/// An unfinished upload of a [`ListMultipartUploadsResult`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedUpload {
    /// The key being uploaded.
    pub key: String,
    /// The upload's id.
    pub upload_id: String,
}

/// Answer to CompleteMultipartUpload when it worked (nothing in it is used).
#[derive(Debug, Deserialize)]
pub struct CompleteMultipartUploadResult {}

impl CompleteMultipartUploadResult {
    /// Its root element: S3's name, and moto's.
    pub const ROOTS: &'static [&'static str] = &[
        "CompleteMultipartUploadResult",
        "CompleteMultipartUploadResponse",
    ];
}

/// S3's error document.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorAnswer {
    /// The error code (`AccessDenied`, `SlowDown`, …).
    #[serde(default)]
    pub code: String,
    /// The server's message.
    #[serde(default)]
    pub message: String,
}

/// The body of CompleteMultipartUpload.
#[derive(Debug, Serialize)]
#[serde(rename = "CompleteMultipartUpload")]
pub struct CompleteMultipartUpload {
    /// Every part, in ascending part number.
    #[serde(rename = "Part")]
    pub parts: Vec<CompletedPart>,
}

/// A part of [`CompleteMultipartUpload`].
#[derive(Debug, Serialize)]
pub struct CompletedPart {
    /// Its number (1-based).
    #[serde(rename = "PartNumber")]
    pub part_number: u32,
    /// The ETag its upload answered.
    #[serde(rename = "ETag")]
    pub etag: String,
}

/// The body of PutObjectLegalHold.
#[derive(Debug, Serialize)]
#[serde(rename = "LegalHold")]
pub struct LegalHold {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Status")]
    status: &'static str,
}

impl LegalHold {
    /// ON or OFF.
    pub fn new(on: bool) -> Self {
        LegalHold {
            xmlns: S3_NS,
            status: if on { "ON" } else { "OFF" },
        }
    }
}

/// The body of PutObjectRetention: COMPLIANCE mode until a date.
#[derive(Debug, Serialize)]
#[serde(rename = "Retention")]
pub struct Retention<'a> {
    #[serde(rename = "@xmlns")]
    xmlns: &'static str,
    #[serde(rename = "Mode")]
    mode: &'static str,
    #[serde(rename = "RetainUntilDate")]
    retain_until_date: &'a str,
}

impl<'a> Retention<'a> {
    /// COMPLIANCE retention until `until` (RFC 3339).
    pub fn compliance(until: &'a str) -> Self {
        Retention {
            xmlns: S3_NS,
            mode: "COMPLIANCE",
            retain_until_date: until,
        }
    }
}

/// What an answer turned out to be.
#[derive(Debug)]
pub enum Parsed<T> {
    /// The expected document.
    Answer(T),
    /// An `<Error>` document in its place.
    Error(ErrorAnswer),
}

/// Read an answer whose root element must be one of `roots` (or `Error`).
pub fn parse<T: DeserializeOwned>(roots: &[&str], xml: &[u8]) -> Result<Parsed<T>, String> {
    let found = root_element(xml)?;
    if found == "Error" {
        return quick_xml::de::from_reader(xml)
            .map(Parsed::Error)
            .map_err(|e| format!("an unreadable <Error> document: {e}"));
    }
    if !roots.contains(&found.as_str()) {
        return Err(format!(
            "<{found}> where <{}> was expected",
            roots.join("> or <")
        ));
    }
    quick_xml::de::from_reader(xml)
        .map(Parsed::Answer)
        .map_err(|e| format!("an unreadable <{found}> document: {e}"))
}

/// An error answer's code and message; empty when the body is not one (a
/// HEAD has no body, some proxies answer HTML).
pub fn error_answer(xml: &[u8]) -> ErrorAnswer {
    match parse::<ErrorAnswer>(&["Error"], xml) {
        Ok(Parsed::Answer(e) | Parsed::Error(e)) => e,
        Err(_) => ErrorAnswer::default(),
    }
}

/// A request body as XML.
pub fn to_xml<T: Serialize>(body: &T) -> String {
    // Our bodies are plain structs of strings and numbers: serialising them
    // cannot fail.
    quick_xml::se::to_string(body).expect("S3 request bodies serialise")
}

/// The name of the first element (after the declaration and comments).
fn root_element(xml: &[u8]) -> Result<String, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e) | Event::Empty(e)) => {
                return Ok(e.local_name().into_inner().to_owned())
            }
            Ok(Event::Eof) => return Err("an empty answer where XML was expected".into()),
            Ok(_) => buf.clear(),
            Err(e) => return Err(format!("unreadable XML: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer<T: DeserializeOwned>(root: &str, xml: &str) -> T {
        match parse::<T>(&[root], xml.as_bytes()).unwrap() {
            Parsed::Answer(a) => a,
            Parsed::Error(e) => panic!("an error document: {e:?}"),
        }
    }

    #[test]
    fn a_list_page_is_read_with_entities_and_unknown_elements_ignored() {
        let page: ListBucketResult = answer(
            "ListBucketResult",
            r#"<?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
              <IsTruncated>true</IsTruncated>
              <Contents><Key>p/a&amp;b</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>
                <ETag>&quot;x&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
              <Contents><Key>p/c</Key><Size>0</Size></Contents>
              <NextContinuationToken>t/1+=</NextContinuationToken>
            </ListBucketResult>"#,
        );
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("t/1+="));
        let keys: Vec<(&str, u64)> = page
            .contents
            .iter()
            .map(|o| (o.key.as_str(), o.size))
            .collect();
        assert_eq!(keys, [("p/a&b", 3), ("p/c", 0)]);
    }

    #[test]
    fn an_empty_last_page_has_no_contents_and_no_token() {
        let page: ListBucketResult = answer(
            "ListBucketResult",
            "<ListBucketResult><Name>b</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>",
        );
        assert!(page.contents.is_empty() && !page.is_truncated);
        assert_eq!(page.next_continuation_token, None);
    }

    #[test]
    fn contents_split_by_other_elements_are_all_read() {
        let page: ListBucketResult = answer(
            "ListBucketResult",
            "<ListBucketResult><Contents><Key>a</Key></Contents><CommonPrefixes><Prefix>x/</Prefix></CommonPrefixes><Contents><Key>b</Key></Contents></ListBucketResult>",
        );
        assert_eq!(page.contents.len(), 2);
    }

    #[test]
    fn multipart_answers_are_read() {
        let started: InitiateMultipartUploadResult = answer(
            "InitiateMultipartUploadResult",
            "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>VXBsb2Fk</UploadId></InitiateMultipartUploadResult>",
        );
        assert_eq!(started.upload_id, "VXBsb2Fk");
        let open: ListMultipartUploadsResult = answer(
            "ListMultipartUploadsResult",
            "<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>true</IsTruncated>\
             <NextKeyMarker>k2</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>\
             <Upload><Key>k1</Key><UploadId>u1</UploadId><Initiated>2026-01-01T00:00:00Z</Initiated></Upload>\
             <Upload><Key>k2</Key><UploadId>u2</UploadId></Upload></ListMultipartUploadsResult>",
        );
        assert!(open.is_truncated);
        assert_eq!(open.upload.len(), 2);
        assert_eq!(
            (
                open.upload[1].key.as_str(),
                open.upload[1].upload_id.as_str()
            ),
            ("k2", "u2")
        );
        assert_eq!(open.next_key_marker.as_deref(), Some("k2"));
        assert_eq!(open.next_upload_id_marker.as_deref(), Some("u2"));
        for body in [
            &b"<CompleteMultipartUploadResult><Location>l</Location><ETag>\"e-2\"</ETag></CompleteMultipartUploadResult>"[..],
            b"<CompleteMultipartUploadResponse><Bucket>b</Bucket></CompleteMultipartUploadResponse>",
        ] {
            assert!(matches!(
                parse::<CompleteMultipartUploadResult>(CompleteMultipartUploadResult::ROOTS, body),
                Ok(Parsed::Answer(_))
            ));
        }
    }

    #[test]
    fn an_error_document_in_place_of_an_answer_is_the_servers_error() {
        let body = b"<?xml version=\"1.0\"?>\n<Error><Code>InternalError</Code><Message>a &lt;b&gt; c</Message><RequestId>r</RequestId></Error>";
        match parse::<CompleteMultipartUploadResult>(CompleteMultipartUploadResult::ROOTS, body) {
            Ok(Parsed::Error(e)) => {
                assert_eq!(e.code, "InternalError");
                assert_eq!(e.message, "a <b> c");
            }
            other => panic!("{other:?}"),
        }
        let e = error_answer(body);
        assert_eq!(e.code, "InternalError");
        assert_eq!(error_answer(b"").code, "");
        assert_eq!(error_answer(b"<html>502 Bad Gateway</html>").code, "");
    }

    #[test]
    fn a_wrong_or_broken_document_is_refused() {
        let e = parse::<ListBucketResult>(&["ListBucketResult"], b"<Other/>").unwrap_err();
        assert!(e.contains("<Other> where <ListBucketResult>"), "{e}");
        assert!(parse::<ListBucketResult>(&["ListBucketResult"], b"").is_err());
        assert!(parse::<ListBucketResult>(
            &["ListBucketResult"],
            b"<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>"
        )
        .is_err());
        assert!(parse::<InitiateMultipartUploadResult>(
            &["InitiateMultipartUploadResult"],
            b"<InitiateMultipartUploadResult><Bucket>b</Bucket></InitiateMultipartUploadResult>"
        )
        .is_err());
    }

    #[test]
    fn request_bodies_are_xml_with_text_escaped() {
        let body = to_xml(&CompleteMultipartUpload {
            parts: vec![
                CompletedPart {
                    part_number: 1,
                    etag: "\"a&b\"".into(),
                },
                CompletedPart {
                    part_number: 2,
                    etag: "\"c\"".into(),
                },
            ],
        });
        assert_eq!(
            body,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"c\"</ETag></Part></CompleteMultipartUpload>"
        );
        assert_eq!(
            to_xml(&Retention::compliance("2026-12-01T00:00:00Z")),
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>COMPLIANCE</Mode>\
             <RetainUntilDate>2026-12-01T00:00:00Z</RetainUntilDate></Retention>"
        );
    }
}
