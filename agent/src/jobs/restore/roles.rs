//! The roles a dump needs on its target: owners (`ALTER … OWNER TO r`),
//! grantees (`GRANT … TO r`, `REVOKE … FROM r`) and default-privilege roles
//! (`ALTER DEFAULT PRIVILEGES FOR ROLE r`), read from the DDL `pg_restore
//! --schema-only` prints (the TOC listing cannot separate a name with spaces
//! from its owner). Checked before the target is touched, so a missing role is
//! named up front instead of failing `pg_restore` halfway.

use anyhow::Context;
use std::collections::BTreeSet;
use std::path::Path;

/// Roles named by the DDL of the custom-format dump `file`.
pub async fn needed(pg_restore: &Path, file: &Path) -> anyhow::Result<BTreeSet<String>> {
    let out = tokio::process::Command::new(pg_restore)
        .args(["--schema-only", "-f", "-"])
        .arg(file)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("starting {}", pg_restore.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} --schema-only failed ({}): {}",
        pg_restore.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(in_ddl(&String::from_utf8_lossy(&out.stdout)))
}

/// Of `roles`, those the server does not have, sorted.
pub async fn missing(
    client: &tokio_postgres::Client,
    roles: &BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let want: Vec<&str> = roles.iter().map(String::as_str).collect();
    let have: BTreeSet<String> = client
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)",
            &[&want],
        )
        .await
        .context("looking up roles on the target")?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(roles.difference(&have).cloned().collect())
}

/// Roles named in DDL text (pure).
pub fn in_ddl(ddl: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in ddl.lines().map(str::trim) {
        let after = if line.starts_with("ALTER DEFAULT PRIVILEGES FOR ROLE ") {
            line.strip_prefix("ALTER DEFAULT PRIVILEGES FOR ROLE ")
        } else if line.starts_with("ALTER ") {
            line.rfind(" OWNER TO ")
                .map(|i| &line[i + " OWNER TO ".len()..])
        } else if line.starts_with("GRANT ") {
            line.rfind(" TO ").map(|i| &line[i + " TO ".len()..])
        } else if line.starts_with("REVOKE ") {
            line.rfind(" FROM ").map(|i| &line[i + " FROM ".len()..])
        } else {
            None
        };
        let Some(mut rest) = after else { continue };
        while let Some((name, tail)) = ident(rest) {
            let special = ["PUBLIC", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE"];
            if !special.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
                out.insert(name);
            }
            // A list: `TO a, b` (a GRANT's `WITH GRANT OPTION` ends it).
            match tail.trim_start().strip_prefix(',') {
                Some(t) => rest = t.trim_start(),
                None => break,
            }
        }
    }
    out
}

/// One SQL identifier at the start of `s` (quoted or plain) and the rest.
fn ident(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(q) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut it = q.char_indices();
        while let Some((i, c)) = it.next() {
            if c == '"' {
                if q[i + 1..].starts_with('"') {
                    name.push('"');
                    it.next();
                } else {
                    return Some((name, &q[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_owned(), &s[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_grantees_and_default_privilege_roles_are_found() {
        let ddl = r#"
ALTER TABLE public.users OWNER TO app_owner;
ALTER SCHEMA "odd schema" OWNER TO "Mixed ""Quoted"" Role";
GRANT SELECT ON TABLE public.users TO reader, "report writer" WITH GRANT OPTION;
GRANT ALL ON SCHEMA public TO PUBLIC;
REVOKE ALL ON TABLE public.users FROM app_owner;
ALTER DEFAULT PRIVILEGES FOR ROLE deployer IN SCHEMA public GRANT SELECT ON TABLES TO reader;
CREATE TABLE public.t (owner_to text);
COMMENT ON TABLE public.t IS 'ALTER x OWNER TO nobody';
"#;
        let got: Vec<String> = in_ddl(ddl).into_iter().collect();
        assert_eq!(
            got,
            vec![
                "Mixed \"Quoted\" Role",
                "app_owner",
                "deployer",
                "reader",
                "report writer"
            ]
        );
    }
}
