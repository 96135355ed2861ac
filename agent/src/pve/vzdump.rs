//! The backup side of the API (SPEC §12): `vzdump`, a storage's backup
//! content (list, info, delete) and restores (`qemu` `archive`, `lxc`
//! `ostemplate` + `restore=1`). Like the rest of the client it makes no
//! decisions.

use super::{enc, GuestType, PveClient, PveError, Upid};
use serde::Deserialize;

/// One entry of `GET /nodes/{node}/storage/{storage}/content?content=backup`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct BackupVolume {
    /// `storage:backup/vzdump-…`.
    pub volid: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub ctime: i64,
    /// The guest it belongs to.
    #[serde(default)]
    pub vmid: Option<u32>,
    /// `qemu` / `lxc` (the archive's kind).
    #[serde(default)]
    pub subtype: Option<String>,
}

/// `GET /nodes/{node}/storage/{storage}/content/{volid}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct VolumeInfo {
    /// The file on this node.
    pub path: String,
    /// Bytes.
    #[serde(default)]
    pub size: u64,
}

/// `GET /storage/{storage}` (the storage's configuration).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct StorageConfig {
    /// Storage type (`dir`, `nfs`, …).
    #[serde(rename = "type", default)]
    pub storage_type: String,
    /// Its directory, for file-based storages.
    #[serde(default)]
    pub path: Option<String>,
}

impl PveClient {
    fn upid(path: String, method: &'static str, raw: &str) -> Result<Upid, PveError> {
        Upid::parse(raw).map_err(|e| PveError::Decode {
            method,
            path,
            cause: format!("{e} (answer {raw:?})"),
        })
    }

    /// `POST /nodes/{node}/vzdump` for one guest: the task's UPID.
    pub async fn vzdump(
        &self,
        node: &str,
        vmid: u32,
        storage: &str,
        mode: &str,
        compress: &str,
    ) -> Result<Upid, PveError> {
        let path = format!("/nodes/{}/vzdump", enc(node));
        let form = [
            ("vmid", vmid.to_string()),
            ("storage", storage.to_owned()),
            ("mode", mode.to_owned()),
            ("compress", compress.to_owned()),
        ];
        let raw: String = self.call(reqwest::Method::POST, &path, &form).await?;
        Self::upid(path, "POST", &raw)
    }

    /// The backups of `vmid` on `storage`.
    pub async fn backup_volumes(
        &self,
        node: &str,
        storage: &str,
        vmid: u32,
    ) -> Result<Vec<BackupVolume>, PveError> {
        let path = format!(
            "/nodes/{}/storage/{}/content?content=backup&vmid={vmid}",
            enc(node),
            enc(storage)
        );
        self.call(reqwest::Method::GET, &path, &[]).await
    }

    /// A volume's path and size.
    pub async fn volume_info(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
    ) -> Result<VolumeInfo, PveError> {
        let path = format!(
            "/nodes/{}/storage/{}/content/{}",
            enc(node),
            enc(storage),
            enc(volid)
        );
        self.call(reqwest::Method::GET, &path, &[]).await
    }

    /// `DELETE …/content/{volid}`: the UPID of the delete task.
    pub async fn delete_volume(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
    ) -> Result<Upid, PveError> {
        let path = format!(
            "/nodes/{}/storage/{}/content/{}",
            enc(node),
            enc(storage),
            enc(volid)
        );
        let raw: String = self.call(reqwest::Method::DELETE, &path, &[]).await?;
        Self::upid(path, "DELETE", &raw)
    }

    /// `GET /storage/{storage}`: where a file storage keeps its files.
    pub async fn storage_config(&self, storage: &str) -> Result<StorageConfig, PveError> {
        let path = format!("/storage/{}", enc(storage));
        self.call(reqwest::Method::GET, &path, &[]).await
    }

    /// Create guest `vmid` from the archive `volid` on `storage` (`unique`
    /// MAC addresses): qemu `archive`, lxc `ostemplate` + `restore=1`.
    pub async fn restore(
        &self,
        node: &str,
        t: GuestType,
        vmid: u32,
        volid: &str,
        storage: &str,
    ) -> Result<Upid, PveError> {
        let path = format!("/nodes/{}/{}", enc(node), t.as_str());
        let mut form = vec![
            ("vmid", vmid.to_string()),
            ("storage", storage.to_owned()),
            ("unique", "1".to_owned()),
        ];
        match t {
            GuestType::Qemu => form.push(("archive", volid.to_owned())),
            GuestType::Lxc => {
                form.push(("ostemplate", volid.to_owned()));
                form.push(("restore", "1".to_owned()));
            }
        }
        let raw: String = self.call(reqwest::Method::POST, &path, &form).await?;
        Self::upid(path, "POST", &raw)
    }
}
