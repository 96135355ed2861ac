//! Checkpoints signed by an Ed25519 key on a PKCS#11 token (SPEC §11,
//! `signing_key_pkcs11`): the key never leaves the token; the agent finds it
//! by an RFC 7512 URI (`token`, `object`, `id`), logs in with the PIN from a
//! secret file and signs with CKM_EDDSA. The public key is read from the
//! token's public key object (CKA_EC_POINT) so it can be published like a
//! file key's.

use anyhow::Context;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ed25519_dalek::{Signature, VerifyingKey};
use std::path::Path;

/// What a `pkcs11:` URI selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uri {
    /// Token label.
    pub token: Option<String>,
    /// Object label (CKA_LABEL).
    pub object: Option<String>,
    /// Object id (CKA_ID).
    pub id: Option<Vec<u8>>,
}

fn pct_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding at {:?}", &s[i..]))?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Parse an RFC 7512 URI; a PIN in the URI is refused (it belongs in
/// `pkcs11_pin_file`), as are attributes this agent does not use.
pub fn parse_uri(s: &str) -> Result<Uri, String> {
    let rest = s
        .strip_prefix("pkcs11:")
        .ok_or("a PKCS#11 URI starts with `pkcs11:` (RFC 7512)")?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if query.split('&').any(|q| q.starts_with("pin-")) {
        return Err("the URI carries a PIN: put it in pkcs11_pin_file instead".into());
    }
    let mut u = Uri::default();
    for attr in path.split(';').filter(|a| !a.is_empty()) {
        let (k, v) = attr
            .split_once('=')
            .ok_or_else(|| format!("{attr:?} is not name=value"))?;
        let v = pct_decode(v)?;
        let text = || String::from_utf8(v.clone()).map_err(|_| format!("{k} is not UTF-8"));
        match k {
            "token" => u.token = Some(text()?),
            "object" => u.object = Some(text()?),
            "id" => u.id = Some(v),
            "type" if v == b"private" => {}
            "manufacturer"
            | "model"
            | "serial"
            | "library-manufacturer"
            | "library-description"
            | "library-version"
            | "slot-description"
            | "slot-manufacturer"
            | "slot-id" => {
                return Err(format!(
                "the URI attribute {k} is not supported; select the key by token, object and id"
            ))
            }
            _ => return Err(format!("unknown URI attribute {k:?}")),
        }
    }
    if u.object.is_none() && u.id.is_none() {
        return Err("the URI names no key: add object=LABEL (or id=%XX…)".into());
    }
    Ok(u)
}

/// An Ed25519 key on a token, logged in and ready to sign.
pub struct TokenKey {
    // Dropped in this order: the session before the library.
    session: Session,
    _ctx: Pkcs11,
    key: ObjectHandle,
    public: VerifyingKey,
}

impl TokenKey {
    /// Load `module`, find the token and key `uri` names, log in with the PIN
    /// in `pin_file` (which must be a tight secret file).
    pub fn open(module: &Path, uri: &str, pin_file: &Path) -> anyhow::Result<TokenKey> {
        let u = parse_uri(uri).map_err(|e| anyhow::anyhow!("signing_key_pkcs11: {e}"))?;
        if let Some((msg, hint)) = crate::fsx::secret_file_problem(pin_file, false, None) {
            anyhow::bail!("pkcs11_pin_file: {msg}; {hint}");
        }
        let pin = crate::fsx::open_read(pin_file)
            .and_then(std::io::read_to_string)
            .with_context(|| format!("reading the PKCS#11 PIN file {}", pin_file.display()))?;
        let pin = AuthPin::new(pin.trim_end_matches(['\n', '\r']).into());
        let ctx = Pkcs11::new(module)
            .with_context(|| format!("loading the PKCS#11 module {}", module.display()))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .context("initialising the PKCS#11 module")?;
        let mut found = None;
        for slot in ctx
            .get_slots_with_token()
            .context("listing PKCS#11 slots")?
        {
            let info = ctx.get_token_info(slot).context("reading a token's info")?;
            if u.token
                .as_deref()
                .is_none_or(|t| info.label().trim_end() == t)
            {
                found = Some(slot);
                break;
            }
        }
        let slot = found.with_context(|| {
            format!(
                "no PKCS#11 token labelled {:?} in {}",
                u.token.as_deref().unwrap_or("(any)"),
                module.display()
            )
        })?;
        let session = ctx
            .open_ro_session(slot)
            .context("opening a PKCS#11 session")?;
        session
            .login(UserType::User, Some(&pin))
            .context("logging in to the PKCS#11 token (check pkcs11_pin_file)")?;
        let find = |class: ObjectClass| -> anyhow::Result<ObjectHandle> {
            let mut t = vec![Attribute::Class(class)];
            if let Some(l) = &u.object {
                t.push(Attribute::Label(l.as_bytes().to_vec()));
            }
            if let Some(id) = &u.id {
                t.push(Attribute::Id(id.clone()));
            }
            let found = session.find_objects(&t).context("searching the token")?;
            match found.as_slice() {
                [one] => Ok(*one),
                [] => anyhow::bail!("the token holds no {class} matching {uri}"),
                _ => anyhow::bail!(
                    "{} objects of class {class} match {uri}: add id= to the URI",
                    found.len()
                ),
            }
        };
        let key = find(ObjectClass::PRIVATE_KEY)?;
        let pub_obj = find(ObjectClass::PUBLIC_KEY)?;
        let attrs = session
            .get_attributes(pub_obj, &[AttributeType::EcPoint])
            .context("reading the public key from the token")?;
        let point = attrs
            .iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p.clone()),
                _ => None,
            })
            .context("the token's public key has no CKA_EC_POINT")?;
        // A DER OCTET STRING around the 32 bytes, or the bytes themselves.
        let raw: &[u8] = match point.as_slice() {
            [0x04, 32, rest @ ..] if rest.len() == 32 => rest,
            p if p.len() == 32 => p,
            _ => anyhow::bail!(
                "the token's key {uri} is not an Ed25519 key (CKA_EC_POINT of {} bytes)",
                point.len()
            ),
        };
        let bytes: [u8; 32] = raw.try_into().unwrap_or([0; 32]);
        let public = VerifyingKey::from_bytes(&bytes).map_err(|e| {
            anyhow::anyhow!("the token's public key is not a valid Ed25519 point ({e})")
        })?;
        Ok(TokenKey {
            session,
            _ctx: ctx,
            key,
            public,
        })
    }

    /// The public half.
    pub fn public(&self) -> VerifyingKey {
        self.public
    }

    /// Sign `msg` on the token (CKM_EDDSA, Ed25519).
    pub fn sign(&self, msg: &[u8]) -> anyhow::Result<Signature> {
        let mech = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let sig = self
            .session
            .sign(&mech, self.key, msg)
            .context("signing the checkpoint on the PKCS#11 token")?;
        Signature::from_slice(&sig).map_err(|_| {
            anyhow::anyhow!("the token returned a {}-byte signature, not 64", sig.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7512_uris_select_token_object_and_id_and_refuse_a_pin() {
        assert_eq!(
            parse_uri("pkcs11:token=cloudnx;object=audit%20key;id=%01%ff").unwrap(),
            Uri {
                token: Some("cloudnx".into()),
                object: Some("audit key".into()),
                id: Some(vec![1, 255]),
            }
        );
        assert!(parse_uri("pkcs11:token=t;object=a?pin-value=1234")
            .unwrap_err()
            .contains("pkcs11_pin_file"));
        assert!(parse_uri("token=t;object=a").is_err());
        assert!(parse_uri("pkcs11:token=t").unwrap_err().contains("object="));
        assert!(parse_uri("pkcs11:object=a;colour=red").is_err());
    }
}
