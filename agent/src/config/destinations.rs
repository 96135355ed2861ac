//! `[[destinations]]`: where backups are written (S3-compatible or a filesystem).

use super::common::check_secret;
use super::problem::{Check, Problem};
use super::schema::{fragment, Ctx, Named, Rules};
use std::path::PathBuf;

fragment! {
    /// A destination as written in one file.
    raw RawDestination by name;
    /// What every destination has.
    #[derive(Debug)]
    pub struct Common {
        /// Name referenced by `backup.destinations` and `restore_drill.destination`.
        name: String = required,
        /// `"s3"` or `"filesystem"`.
        kind as "type": String = required,
        /// Key prefix under which this host's backups live (default: host_id).
        prefix: String = {|c| c.host_id.clone()},
    }
    /// S3 settings.
    #[derive(Debug, Clone, PartialEq)]
    pub struct S3Destination {
        /// e.g. `http://127.0.0.1:9000`.
        endpoint: String = required,
        /// SigV4 region.
        region: String = ("us-east-1"),
        /// Bucket.
        bucket: String = required,
        /// File holding the access key id.
        access_key_id_file: PathBuf = required,
        /// File holding the secret access key.
        secret_access_key_file: PathBuf = required,
        /// > 0: COMPLIANCE retention for this many days on every object written.
        object_lock_days: u32 = (0),
        /// Path-style addressing (default true: MinIO, most S3-compatibles).
        path_style: bool = (true),
        /// PEM CA certificates trusted for this endpoint besides the public roots
        /// (an on-premises S3 with a private CA).
        ca_file: PathBuf = optional,
    }
    /// Filesystem settings.
    #[derive(Debug)]
    pub struct FsDestination {
        /// Root directory.
        path: PathBuf = required,
    }
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
    /// The TLS floor of its client (`[policy] min_tls_version`).
    pub min_tls: crate::tls_floor::TlsFloor,
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

impl Rules for RawDestination {
    fn rules(&self, c: &mut Check) {
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
}

/// Build one destination: the keys of its type, and none of the other's.
pub(super) fn build(
    mut raw: RawDestination,
    ctx: &Ctx,
    problems: &mut Vec<Problem>,
) -> Option<Destination> {
    let sect = match raw.name() {
        Some(n) => format!("destinations \"{}\"", n.get_ref()),
        None => "destinations".into(),
    };
    let common = Common::build(&mut raw, &sect, ctx, problems)?;
    let (other_keys, kind) = if common.kind == "s3" {
        (
            FsDestination::written(&raw),
            S3Destination::build(&mut raw, &sect, ctx, problems).map(DestinationKind::S3),
        )
    } else {
        (
            S3Destination::written(&raw),
            FsDestination::build(&mut raw, &sect, ctx, problems)
                .map(|f| DestinationKind::Filesystem { path: f.path }),
        )
    };
    for key in other_keys {
        problems.push(
            Problem::general(format!(
                "[{sect}] has `{key}`, which does not apply to type = {:?}",
                common.kind
            ))
            .hint(format!("remove `{key}`")),
        );
    }
    Some(Destination {
        name: common.name,
        prefix: common.prefix,
        kind: kind?,
        min_tls: crate::tls_floor::TlsFloor::default(),
    })
}

impl From<&S3Destination> for crate::store::s3::S3Settings {
    fn from(d: &S3Destination) -> Self {
        crate::store::s3::S3Settings {
            endpoint: d.endpoint.clone(),
            region: d.region.clone(),
            bucket: d.bucket.clone(),
            access_key_id_file: d.access_key_id_file.clone(),
            secret_access_key_file: d.secret_access_key_file.clone(),
            object_lock_days: d.object_lock_days,
            path_style: d.path_style,
            min_tls: crate::tls_floor::TlsFloor::default(),
            ca_file: d.ca_file.clone(),
        }
    }
}

impl Destination {
    /// Open this destination for a job. `max_in_flight` bounds concurrent
    /// part uploads; every network wait ends with
    /// [`crate::store::Cause::Cancelled`] once `cancel` fires (a filesystem
    /// destination's calls are local and short).
    pub fn open(
        &self,
        max_in_flight: usize,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> crate::store::StoreResult<std::sync::Arc<dyn crate::store::Destination>> {
        Ok(match &self.kind {
            DestinationKind::Filesystem { path } => {
                std::sync::Arc::new(crate::store::fs::FsStore::new(&self.name, path))
            }
            DestinationKind::S3(s) => std::sync::Arc::new(crate::store::s3::S3Store::new(
                &self.name,
                &crate::store::s3::S3Settings {
                    min_tls: self.min_tls,
                    ..s.into()
                },
                max_in_flight,
                cancel.clone(),
            )?),
        })
    }
}
