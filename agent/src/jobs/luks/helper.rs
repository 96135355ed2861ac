//! The protocol between the LUKS duty and its privileged helper
//! (docs/adr/0008-privileges.md): one JSON request line `{"action", "volume"}`
//! and one JSON answer line `{"ok":true,"result":…}` /
//! `{"ok":false,"error":"step: cause"}`. The agent's side is
//! [`super::helper_client`]; the root helper binary's is
//! [`super::helper_server`]. Neither imports the other.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest request line accepted (the real ones are under 200 bytes).
pub const MAX_REQUEST: usize = 4096;
/// How long the helper waits for the request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent asks of the helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The header summary ([`HeaderState`]).
    Inspect,
    /// Activate the mapping with the configured keyfile (never mounts).
    Open,
    /// The header backup bytes, base64.
    HeaderBackup,
}

impl Action {
    /// What the action does, for messages.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Inspect => "inspect",
            Action::Open => "open",
            Action::HeaderBackup => "back up the header of",
        }
    }
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// What to do.
    pub action: Action,
    /// A `[[luks.volumes]]` name of the helper's own configuration.
    pub volume: String,
}

/// Parse a request line (pure).
pub fn parse_request(buf: &[u8]) -> anyhow::Result<Request> {
    anyhow::ensure!(
        buf.len() <= MAX_REQUEST,
        "request: longer than {MAX_REQUEST} bytes"
    );
    let line = buf.strip_suffix(b"\n").unwrap_or(buf);
    serde_json::from_slice(line).map_err(|e| {
        anyhow::anyhow!(
            "request: not {{\"action\": \"inspect\"|\"open\"|\"header-backup\", \"volume\": NAME}}: {e}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_an_action_and_a_volume_and_nothing_else() {
        let cases: [(&[u8], Option<Action>); 7] = [
            (
                br#"{"action":"inspect","volume":"a"}"#,
                Some(Action::Inspect),
            ),
            (
                b"{\"action\":\"open\",\"volume\":\"a\"}\n",
                Some(Action::Open),
            ),
            (
                br#"{"action":"header-backup","volume":"a"}"#,
                Some(Action::HeaderBackup),
            ),
            (br#"{"action":"format","volume":"a"}"#, None),
            (
                br#"{"action":"open","volume":"a","device":"/dev/sda"}"#,
                None,
            ),
            (br#"{"action":"open"}"#, None),
            (b"not json", None),
        ];
        for (line, want) in cases {
            let got = parse_request(line).ok().map(|r| r.action);
            assert_eq!(got, want, "{}", String::from_utf8_lossy(line));
        }
        let long = vec![b' '; MAX_REQUEST + 1];
        assert!(format!("{:#}", parse_request(&long).unwrap_err()).contains("longer than"));
    }
}
