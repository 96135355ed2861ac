//! The TLS floor of every outbound HTTPS client (SPEC §10, `[policy]
//! min_tls_version`): S3, Proxmox, Alertmanager (the control plane's client
//! is TLS 1.3 only whatever the floor, SPEC §6). A leaf: the configuration
//! builds a [`TlsFloor`], each client takes it as a parameter.
//!
//! Must never: let a client be built without it, or report a server that
//! cannot speak the floor as merely "unreachable" — the operator must read
//! which endpoint and which version.

/// The lowest TLS version a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub enum TlsFloor {
    /// TLS 1.2 and 1.3.
    V1_2,
    /// TLS 1.3 only (the default: "TLS 1.3 minimum on every endpoint").
    #[default]
    V1_3,
}

impl TlsFloor {
    /// `"1.2"` or `"1.3"`.
    pub fn parse(s: &str) -> Option<TlsFloor> {
        match s {
            "1.2" => Some(TlsFloor::V1_2),
            "1.3" => Some(TlsFloor::V1_3),
            _ => None,
        }
    }

    /// As written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFloor::V1_2 => "1.2",
            TlsFloor::V1_3 => "1.3",
        }
    }

    /// A reqwest client builder on rustls with this floor.
    pub fn apply(self, b: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        let v = match self {
            TlsFloor::V1_2 => reqwest::tls::Version::TLS_1_2,
            TlsFloor::V1_3 => reqwest::tls::Version::TLS_1_3,
        };
        b.use_rustls_tls().min_tls_version(v)
    }

    /// When `e` is a handshake the server lost because it does not speak
    /// the floor: words that name the endpoint and the version.
    pub fn explain(self, endpoint: &str, e: &(dyn std::error::Error + 'static)) -> Option<String> {
        let mut chain = String::new();
        let mut cur = Some(e);
        while let Some(x) = cur {
            chain.push_str(&format!("{x:?} {x} "));
            cur = x.source();
        }
        let version_refused = [
            "ProtocolVersion",
            "protocol version",
            "Tls12NotOffered",
            "SupportedVersionsExtensionRequired",
            "UnsupportedVersion",
        ]
        .iter()
        .any(|m| chain.contains(m));
        version_refused.then(|| {
            format!(
                "{endpoint} does not speak TLS {} or newer (the handshake failed on the protocol version); \
                 upgrade the server, or lower [policy] min_tls_version if your policy allows it",
                self.as_str()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_parse_and_order() {
        assert_eq!(TlsFloor::parse("1.3"), Some(TlsFloor::V1_3));
        assert_eq!(TlsFloor::parse("1.2"), Some(TlsFloor::V1_2));
        assert_eq!(TlsFloor::parse("1.1"), None);
        assert_eq!(TlsFloor::default(), TlsFloor::V1_3);
        assert!(TlsFloor::V1_2 < TlsFloor::V1_3);
    }
}
