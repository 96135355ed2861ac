//! `[proxmox]`: the Proxmox VE API connection shared by `[snapshots]` and
//! `[vm_backup]` (SPEC §12). The same keys are still accepted in
//! `[snapshots]`, where they win over `[proxmox]`; `check-config` says to move them.

use super::common::{check_file_exists, check_secret};
use super::problem::{Check, Problem};
use super::schema::{fragment, Ctx, Opt, Rules};
use std::path::PathBuf;

fragment! {
    /// `[proxmox]` as written in one file.
    raw RawProxmox;
    /// The Proxmox VE API connection.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ProxmoxConfig {
        /// e.g. `https://127.0.0.1:8006/api2/json`.
        api_url: String = ("https://127.0.0.1:8006/api2/json"),
        /// `user@realm!tokenname`.
        api_token_id: String = required,
        /// File holding the token secret.
        api_token_secret_file: PathBuf = required,
        /// CA that signed the node's API certificate (pve-root-ca).
        ca_file: PathBuf = ("/etc/pve/pve-root-ca.pem"),
        /// Node name (default: host name).
        node: String = {|c| c.host_name.clone()},
    }
}

impl Rules for RawProxmox {
    fn rules(&self, c: &mut Check) {
        check_connection(
            c,
            &self.api_url,
            &self.api_token_id,
            &self.api_token_secret_file,
            &self.ca_file,
        );
    }
}

/// The checks of the connection keys, wherever they are written.
pub(super) fn check_connection(
    c: &mut Check,
    api_url: &Opt<String>,
    api_token_id: &Opt<String>,
    api_token_secret_file: &Opt<PathBuf>,
    ca_file: &Opt<PathBuf>,
) {
    check_secret(c, "api_token_secret_file", api_token_secret_file, false);
    check_file_exists(c, "ca_file", ca_file);
    if let Some(u) = api_url {
        let rest = u.get_ref().strip_prefix("https://").unwrap_or("");
        if rest.is_empty() || rest.starts_with('/') {
            c.err(
                u.span(),
                format!("api_url {:?} is not an https:// URL", u.get_ref()),
                "the Proxmox API is only spoken over verified TLS, e.g. api_url = \"https://127.0.0.1:8006/api2/json\"",
            );
        }
    }
    if let Some(t) = api_token_id {
        if t.get_ref().contains('=') {
            // `user@realm!name=SECRET` is how Proxmox shows a new token.
            c.err(
                t.span(),
                "api_token_id holds the token's secret (the part after '=')",
                "keep only user@realm!tokenname here and put the secret in api_token_secret_file (mode 0600)",
            );
        } else if !t.get_ref().contains('!') || !t.get_ref().contains('@') {
            c.err(
                t.span(),
                format!(
                    "api_token_id {:?} is not of the form user@realm!token",
                    t.get_ref()
                ),
                "e.g. api_token_id = \"cloudnx@pve!agent\"",
            );
        }
    }
}

/// Build `[proxmox]` (None when absent); an empty `node` means the host name.
pub(super) fn build(
    raw: Option<RawProxmox>,
    ctx: &Ctx,
    problems: &mut Vec<Problem>,
) -> Option<ProxmoxConfig> {
    let mut p = ProxmoxConfig::build(&mut raw?, "proxmox", ctx, problems)?;
    if p.node.is_empty() {
        p.node.clone_from(&ctx.host_name);
    }
    Some(p)
}
