//! The `vm-restore` duty (SPEC §12): one VM backup back into Proxmox as a
//! guest. The manifest is read, the object downloaded and decrypted into the
//! dump storage's directory under a hidden temporary name, both SHA-256s
//! (object and archive) checked — only then is the archive given its vzdump
//! name and handed to Proxmox: `POST /nodes/{node}/qemu` (`archive`,
//! `storage`, `unique=1`) or `POST /nodes/{node}/lxc` (`ostemplate`,
//! `restore=1`, `storage`). A target VMID that exists anywhere in the
//! cluster is refused before anything is downloaded.

use crate::jobs::context::{JobContext, Outcome};
use crate::jobs::retrieve::{self, Expected};
use crate::jobs::vm_backup::manifest::{self, VmManifest};
use crate::pve::{GuestType, PveClient, PveError};
use crate::store::Destination;
use anyhow::{bail, Context};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

/// The complete backups (stamps, oldest first) of `vmid` among `keys`, a
/// listing of `{prefix}/vm/{vmid}/`.
pub fn complete_stamps(dir: &str, keys: &[String]) -> Vec<String> {
    let mut out: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            let (stamp, file) = k.strip_prefix(dir)?.split_once('/')?;
            (file == manifest::MANIFEST
                && crate::jobs::backup::retention::parse_stamp(stamp).is_some())
            .then(|| stamp.to_owned())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Read a VM backup manifest, size-capped, and check it names this guest.
pub async fn read_manifest(
    d: &dyn Destination,
    key: &str,
    vmid: u32,
) -> anyhow::Result<VmManifest> {
    let bytes = d.get(key, retrieve::MAX_MANIFEST).await?;
    let m: VmManifest =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {key} on {}", d.name()))?;
    anyhow::ensure!(
        m.format == manifest::FORMAT && m.vmid == vmid,
        "{key} on {} is not a {} manifest of guest {vmid}",
        d.name(),
        manifest::FORMAT
    );
    anyhow::ensure!(
        manifest::archive_name(&m.archive, vmid) == Some(m.guest_type),
        "{key} names the archive {:?}, which is not a vzdump archive of guest {vmid}",
        m.archive
    );
    Ok(m)
}

/// Run the duty.
pub async fn run(ctx: &JobContext) -> anyhow::Result<Outcome> {
    let cfg =
        ctx.config.vm_backup.as_ref().context(
            "vm-restore needs the [vm_backup] section (its destinations and dump_storage)",
        )?;
    let p = ctx
        .params
        .vm_restore
        .as_ref()
        .context("vm-restore was started without its parameters")?;
    let px = &cfg.proxmox;
    let why = |e: &PveError| e.explain(&px.api_token_id, &px.api_token_secret_file);
    let target = p.target_vmid.unwrap_or(p.vmid);
    let key = crate::jobs::restore::secret_key(&ctx.config, p.key.as_deref())?;
    let client = PveClient::new(
        &px.api_url,
        &px.api_token_id,
        &px.api_token_secret_file,
        &px.ca_file,
        Duration::from_secs(60),
        ctx.config.policy.min_tls_version,
    )
    .map_err(|e| anyhow::anyhow!("setting up the Proxmox API client: {e}"))?;
    // Refuse an existing target before anything is downloaded.
    let guests = client
        .cluster_guests()
        .await
        .map_err(|e| anyhow::anyhow!("listing the cluster's guests: {}", why(&e)))?;
    if let Some(g) = guests.iter().find(|g| g.vmid == target) {
        bail!(
            "guest {target} already exists ({} on {}): vm-restore never overwrites a guest; pass --target-vmid with a free VMID",
            g.guest_type.noun(),
            g.node
        );
    }
    let dest_name = ctx
        .params
        .destination
        .clone()
        .or_else(|| cfg.destinations.first().cloned())
        .context("no destination")?;
    let d = ctx
        .config
        .destination(&dest_name)
        .with_context(|| format!("destination {dest_name:?} is not defined"))?;
    let store = d.open(2, &ctx.cancel)?;
    let dir = manifest::guest_dir(&d.prefix, p.vmid);
    let keys: Vec<String> = store.list(&dir).await?.into_iter().map(|o| o.key).collect();
    let stamps = complete_stamps(&dir, &keys);
    let stamp = match p.backup.as_deref() {
        None | Some("latest") => stamps
            .last()
            .cloned()
            .with_context(|| format!("{dest_name} holds no complete backup of guest {}", p.vmid))?,
        Some(s) => {
            if !stamps.iter().any(|x| x == s) {
                bail!(
                    "{dest_name} holds no complete backup {s} of guest {} (complete: {})",
                    p.vmid,
                    stamps.join(", ")
                );
            }
            s.to_owned()
        }
    };
    let m = read_manifest(
        store.as_ref(),
        &manifest::manifest_key(&d.prefix, p.vmid, &stamp),
        p.vmid,
    )
    .await?;
    let object = manifest::object_key(&d.prefix, p.vmid, &stamp, &m.archive);

    // Where the dump storage keeps archives on this node.
    let sc = client
        .storage_config(&cfg.dump_storage)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "reading storage {}'s configuration: {}",
                cfg.dump_storage,
                why(&e)
            )
        })?;
    let Some(root) = sc.path else {
        bail!("storage {} ({}) has no directory: vm-restore needs a file storage with content \"backup\" as [vm_backup] dump_storage", cfg.dump_storage, sc.storage_type);
    };
    let dump_dir = PathBuf::from(root).join("dump");
    // A fresh vzdump name (the original may still be there with keep_local).
    let (gt, rest) = match m.guest_type {
        GuestType::Qemu => (
            "qemu",
            m.archive
                .trim_start_matches(&format!("vzdump-qemu-{}-", p.vmid)),
        ),
        GuestType::Lxc => (
            "lxc",
            m.archive
                .trim_start_matches(&format!("vzdump-lxc-{}-", p.vmid)),
        ),
    };
    let ext = rest.split_once('.').map_or("", |(_, e)| e);
    let now = chrono::Local::now().format("%Y_%m_%d-%H_%M_%S");
    let name = format!("vzdump-{gt}-{}-{now}.{ext}", p.vmid);
    anyhow::ensure!(
        manifest::archive_name(&name, p.vmid).is_some(),
        "internal: made an invalid archive name {name}"
    );
    let path = dump_dir.join(&name);

    ctx.progress.phase(
        format!("download, decrypt and verify {}", m.archive),
        Some(m.size_bytes),
    );
    let want = Expected {
        size: m.size_bytes,
        sha256: m.sha256.clone(),
        plaintext_size: m.plaintext_size_bytes,
        plaintext_sha256: m.plaintext_sha256.clone(),
    };
    let mut staged = crate::fsx::Staged::new(&path, 0o640).with_context(|| {
        format!("writing into {} (the agent's user needs write access to the dump directory: see docs/adr/0014)", dump_dir.display())
    })?;
    retrieve::fetch_decrypt(
        store.as_ref(),
        &object,
        &key,
        staged.file_handle()?,
        &want,
        &ctx.progress,
    )
    .await
    .with_context(|| format!("{object} on {dest_name}: nothing was handed to Proxmox"))?;
    // Verified: only now does the archive get a name Proxmox sees.
    staged.commit_new()?;
    let volid = format!("{}:backup/{name}", cfg.dump_storage);
    ctx.audit(
        "vm_restore.archive",
        json!({"vmid": p.vmid, "target_vmid": target, "stamp": stamp, "destination": dest_name,
               "volid": volid, "sha256": m.plaintext_sha256}),
    )
    .await?;
    ctx.progress
        .phase(format!("restoring guest {target} from {volid}"), None);
    let upid = client
        .restore(&px.node, m.guest_type, target, &volid, &p.storage)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "asking Proxmox to restore {volid} as guest {target}: {}",
                why(&e)
            )
        })?;
    let st = client
        .wait_task(
            &upid,
            Duration::from_secs(cfg.task_timeout_seconds),
            &ctx.cancel,
        )
        .await
        .map_err(|e| anyhow::anyhow!("waiting for restore task {upid}: {}", why(&e)))?;
    let exit = st.exitstatus.unwrap_or_default();
    let result = json!({
        "vmid": p.vmid, "target_vmid": target, "type": m.guest_type, "stamp": stamp,
        "destination": dest_name, "archive": m.archive, "volid": volid, "upid": upid.raw,
        "exitstatus": exit, "storage": p.storage,
    });
    if exit != "OK" && !exit.starts_with("WARNINGS") {
        let tail = client.task_log_tail(&upid, 8).await.unwrap_or_default();
        return Ok(Outcome::failure(
            format!("restore task {upid} of guest {target} failed: {exit} (log: {}); the verified archive stays at {volid}", tail.join(" | ")),
            result,
        ));
    }
    // The decrypted archive was only a means: remove it again.
    if let Ok(u) = client
        .delete_volume(&px.node, &cfg.dump_storage, &volid)
        .await
    {
        let _ = client
            .wait_task(&u, Duration::from_secs(600), &ctx.cancel)
            .await;
    }
    Ok(Outcome::success(
        format!(
            "restored guest {} backup {stamp} from {dest_name} as {} {target} (disks on {})",
            p.vmid,
            m.guest_type.noun(),
            p.storage
        ),
        result,
    ))
}
