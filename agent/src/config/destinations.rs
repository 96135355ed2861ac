//! `[[destinations]]`: where backups are written (S3-compatible or a filesystem).

use super::common::*;
use super::problem::{Check, Problem};
use serde::Deserialize;
use std::path::PathBuf;

/// A destination as written in one file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    name: Opt<String>,
    #[serde(rename = "type")]
    kind: Opt<String>,
    prefix: Opt<String>,
    // s3
    endpoint: Opt<String>,
    region: Opt<String>,
    bucket: Opt<String>,
    access_key_id_file: Opt<PathBuf>,
    secret_access_key_file: Opt<PathBuf>,
    object_lock_days: Opt<u32>,
    path_style: Opt<bool>,
    // filesystem
    path: Opt<PathBuf>,
}

/// A validated destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// Name referenced by `backup.destinations` and `restore_drill.destination`.
    pub name: String,
    /// Key prefix under which this host's backups live (default: host_id).
    pub prefix: String,
    /// Where and how.
    pub kind: DestinationKind,
}

/// The two kinds of destination.
#[derive(Debug, Clone, PartialEq)]
pub enum DestinationKind {
    /// Any S3-compatible API.
    S3(S3Destination),
    /// A local (or mounted) directory.
    Filesystem {
        /// Root directory.
        path: PathBuf,
    },
}

/// S3 settings.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Destination {
    /// e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// SigV4 region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// File holding the access key id.
    pub access_key_id_file: PathBuf,
    /// File holding the secret access key.
    pub secret_access_key_file: PathBuf,
    /// > 0: COMPLIANCE retention for this many days on every object written.
    pub object_lock_days: u32,
    /// Path-style addressing (default true: MinIO, most S3-compatibles).
    pub path_style: bool,
}

impl RawDestination {
    /// Per-value checks against this file.
    pub fn check(&self, c: &mut Check) {
        if let Some(k) = &self.kind {
            if !matches!(k.get_ref().as_str(), "s3" | "filesystem") {
                c.err(
                    k.span(),
                    format!("unknown destination type {:?}", k.get_ref()),
                    "use type = \"s3\" or type = \"filesystem\"",
                );
            }
        }
        check_secret(c, "access_key_id_file", &self.access_key_id_file, false);
        check_secret(
            c,
            "secret_access_key_file",
            &self.secret_access_key_file,
            false,
        );
        check_abs(c, "path", &self.path);
        if let Some(e) = &self.endpoint {
            if !(e.get_ref().starts_with("http://") || e.get_ref().starts_with("https://")) {
                c.err(
                    e.span(),
                    format!("endpoint {:?} is not an http(s) URL", e.get_ref()),
                    "e.g. endpoint = \"https://fsn1.your-objectstorage.com\"",
                );
            }
        }
    }

    /// The `name`, used to merge drop-ins entry by entry.
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(|n| n.get_ref().as_str())
    }

    /// Merge a later definition of the same destination over this one.
    pub fn merge(&mut self, o: RawDestination) {
        merge_fields!(self, o; name, kind, prefix, endpoint, region, bucket, access_key_id_file,
            secret_access_key_file, object_lock_days, path_style, path);
    }

    /// Build the validated destination.
    pub fn build(self, host_id: &str, problems: &mut Vec<Problem>) -> Option<Destination> {
        let name = required(self.name, "destinations", "name", problems)?;
        let sect = format!("destinations \"{name}\"");
        let kind = required(self.kind, &sect, "type", problems)?;
        let prefix = or(self.prefix, host_id.to_owned());
        let wrong = |v: bool, key: &str, problems: &mut Vec<Problem>| {
            if v {
                problems.push(
                    Problem::general(format!(
                        "[{sect}] has `{key}`, which does not apply to type = {kind:?}"
                    ))
                    .hint(format!("remove `{key}`")),
                );
            }
        };
        let kind = match kind.as_str() {
            "s3" => {
                wrong(self.path.is_some(), "path", problems);
                DestinationKind::S3(S3Destination {
                    endpoint: required(self.endpoint, &sect, "endpoint", problems)?,
                    region: or(self.region, "us-east-1".into()),
                    bucket: required(self.bucket, &sect, "bucket", problems)?,
                    access_key_id_file: required(
                        self.access_key_id_file,
                        &sect,
                        "access_key_id_file",
                        problems,
                    )?,
                    secret_access_key_file: required(
                        self.secret_access_key_file,
                        &sect,
                        "secret_access_key_file",
                        problems,
                    )?,
                    object_lock_days: or(self.object_lock_days, 0),
                    path_style: or(self.path_style, true),
                })
            }
            _ => {
                for (present, key) in [
                    (self.endpoint.is_some(), "endpoint"),
                    (self.bucket.is_some(), "bucket"),
                    (self.region.is_some(), "region"),
                    (self.access_key_id_file.is_some(), "access_key_id_file"),
                    (
                        self.secret_access_key_file.is_some(),
                        "secret_access_key_file",
                    ),
                    (self.object_lock_days.is_some(), "object_lock_days"),
                ] {
                    wrong(present, key, problems);
                }
                DestinationKind::Filesystem {
                    path: required(self.path, &sect, "path", problems)?,
                }
            }
        };
        Some(Destination { name, prefix, kind })
    }
}
