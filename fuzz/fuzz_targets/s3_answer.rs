//! S3 answers as the destination reads them (any S3-compatible server is a
//! peer we do not control): every XML document `store::s3::xml` decodes.
//!
//! Properties: no panic on any body; an `<Error>` document in place of an
//! answer is read exactly as the error reader reads it, whatever answer was
//! expected (one decoding of the server's refusal, under 200 or not).
#![no_main]

use cloudnx_agent::store::s3::xml::{
    error_answer, parse, CompleteMultipartUploadResult, InitiateMultipartUploadResult,
    ListBucketResult, ListMultipartUploadsResult, Parsed,
};
use libfuzzer_sys::fuzz_target;

fn same_error<T>(parsed: Result<Parsed<T>, String>, data: &[u8]) {
    if let Ok(Parsed::Error(e)) = parsed {
        let again = error_answer(data);
        assert_eq!((e.code, e.message), (again.code, again.message));
    }
}

fuzz_target!(|data: &[u8]| {
    same_error(
        parse::<ListBucketResult>(&["ListBucketResult"], data),
        data,
    );
    same_error(
        parse::<ListMultipartUploadsResult>(&["ListMultipartUploadsResult"], data),
        data,
    );
    same_error(
        parse::<InitiateMultipartUploadResult>(&["InitiateMultipartUploadResult"], data),
        data,
    );
    same_error(
        parse::<CompleteMultipartUploadResult>(CompleteMultipartUploadResult::ROOTS, data),
        data,
    );
    let _ = error_answer(data);
});
