//! Configuration mistakes exit 2 and name the file, line and column (or the path) and a fix.

mod support;
use std::os::unix::fs::PermissionsExt;
use support::{agent, text, Scratch};

fn check(s: &Scratch, body: &str) -> (i32, String) {
    let cfg = s.config(body);
    let o = agent(&cfg, &["check-config"]);
    (o.status.code().unwrap_or(-1), text(&o))
}

/// Line of `needle` in the generated agent.toml (1-based).
fn line_of(s: &Scratch, needle: &str) -> usize {
    let t = std::fs::read_to_string(s.path("agent.toml")).unwrap();
    t.lines()
        .position(|l| l.contains(needle))
        .expect("needle in config")
        + 1
}

#[test]
fn unknown_key_is_rejected_with_file_line_and_column() {
    let s = Scratch::new();
    let (code, out) = check(&s, "[luks]\nschedul = \"*/5 * * * *\"\n");
    assert_eq!(code, 2, "{out}");
    let want = format!(
        "agent.toml:{}:1: unknown field `schedul`",
        line_of(&s, "schedul")
    );
    assert!(out.contains(&want), "expected {want:?} in:\n{out}");
    assert!(
        out.contains("expected one of"),
        "the error should list the valid keys:\n{out}"
    );
}

#[test]
fn wrong_type_names_position() {
    let s = Scratch::new();
    let (code, out) = check(
        &s,
        "[snapshots]\napi_token_id = \"a@pve!b\"\nretention_days = \"seven\"\n",
    );
    assert_eq!(code, 2, "{out}");
    let l = line_of(&s, "retention_days");
    assert!(out.contains(&format!("agent.toml:{l}:18:")), "{out}");
    assert!(out.contains("invalid type"), "{out}");
}

#[test]
fn bad_cron_is_rejected_with_position_and_hint() {
    let s = Scratch::new();
    let (code, out) = check(&s, "[luks]\nschedule = \"61 * * * *\"\n");
    assert_eq!(code, 2, "{out}");
    let l = line_of(&s, "61 * * * *");
    assert!(
        out.contains(&format!(
            "agent.toml:{l}:12: invalid schedule \"61 * * * *\""
        )),
        "{out}"
    );
    assert!(out.contains("hint: use 5 fields"), "{out}");
}

#[test]
fn six_field_cron_is_rejected() {
    let s = Scratch::new();
    let (code, out) = check(&s, "[luks]\nschedule = \"0 30 2 * * *\"\n");
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("expected 5 fields, found 6"), "{out}");
}

#[test]
fn bad_time_zone_is_rejected() {
    let s = Scratch::new();
    let cfg = s.config("");
    let t = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("Asia/Kolkata", "Mars/Olympus_Mons");
    std::fs::write(&cfg, t).unwrap();
    let o = agent(&cfg, &["check-config"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains(&format!(
            "agent.toml:{}:12: unknown time zone \"Mars/Olympus_Mons\"",
            line_of(&s, "Mars")
        )),
        "{out}"
    );
}

#[test]
fn missing_secret_file_names_the_path() {
    let s = Scratch::new();
    let missing = s.path("secrets/pve-token");
    let (code, out) = check(
        &s,
        &format!(
            "[snapshots]\napi_token_id = \"a@pve!b\"\napi_token_secret_file = \"{}\"\n",
            missing.display()
        ),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!("secret file {} cannot be read", missing.display())),
        "{out}"
    );
    assert!(out.contains("install -m 0600"), "{out}");
}

#[test]
fn world_readable_secret_is_rejected_without_revealing_it() {
    let s = Scratch::new();
    let secret = s.secret("secrets/pve-token", "s3cr3t-token-value");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = check(
        &s,
        &format!(
            "[snapshots]\napi_token_id = \"a@pve!b\"\napi_token_secret_file = \"{}\"\n",
            secret.display()
        ),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("is accessible by group or other (mode 0644)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("chmod 0600 {}", secret.display())),
        "{out}"
    );
    assert!(
        !out.contains("s3cr3t-token-value"),
        "the secret leaked into the error:\n{out}"
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let s = Scratch::new();
    let (code, out) = check(
        &s,
        "[luks]\nschedule = \"nope\"\n[luks.policy]\npbkdf = \"md5\"\n",
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("2 configuration problems"), "{out}");
    assert!(out.contains("invalid schedule"), "{out}");
    assert!(out.contains("unknown pbkdf \"md5\""), "{out}");
}

#[test]
fn drop_in_errors_name_the_drop_in_file() {
    let s = Scratch::new();
    let cfg = s.config("");
    std::fs::create_dir_all(s.path("agent.d")).unwrap();
    std::fs::write(s.path("agent.d/50-extra.toml"), "\n[luks]\nbogus = 1\n").unwrap();
    let o = agent(&cfg, &["check-config"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("agent.d/50-extra.toml:3:1: unknown field `bogus`"),
        "{out}"
    );
}

#[test]
fn drop_ins_merge_over_the_main_file_in_name_order() {
    let s = Scratch::new();
    let cfg = s.config("[luks]\nschedule = \"*/5 * * * *\"\n");
    std::fs::create_dir_all(s.path("agent.d")).unwrap();
    std::fs::write(
        s.path("agent.d/10-a.toml"),
        "[luks]\nschedule = \"0 1 * * *\"\n",
    )
    .unwrap();
    std::fs::write(
        s.path("agent.d/20-b.toml"),
        "[luks]\nschedule = \"0 3 * * *\"\n",
    )
    .unwrap();
    std::fs::write(s.path("agent.d/ignored.conf"), "not toml at all [").unwrap();
    let o = agent(&cfg, &["check-config"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("luks-check     \"0 3 * * *\" in Asia/Kolkata"),
        "{out}"
    );
    assert!(out.contains("agent.d/20-b.toml"), "{out}");
}

#[test]
fn config_path_comes_from_the_environment_variable() {
    let s = Scratch::new();
    let cfg = s.config("");
    let o = std::process::Command::new(support::agent_bin())
        .arg("check-config")
        .env("CLOUDNX_AGENT_CONFIG", &cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(&cfg.display().to_string()));
    let o = std::process::Command::new(support::agent_bin())
        .arg("check-config")
        .env("CLOUDNX_AGENT_CONFIG", s.path("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).contains("nope.toml: cannot read configuration"),
        "{}",
        text(&o)
    );
}

#[test]
fn undefined_destination_reference_is_a_config_error() {
    let s = Scratch::new();
    let key = s.secret("keys/pub.asc", "not checked here");
    let (code, out) = check(&s, &format!(
        "[[destinations]]\nname = \"local\"\ntype = \"filesystem\"\npath = \"/srv/x\"\n\n[backup]\ndestinations = [\"local\", \"offsite\"]\nencrypt_to = [\"{}\"]\n",
        key.display()
    ));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("[backup] destinations names \"offsite\", which no [[destinations]] defines"),
        "{out}"
    );
    assert!(out.contains("defined destinations: [\"local\"]"), "{out}");
}

#[test]
fn a_job_whose_section_is_absent_exits_2_saying_so() {
    let s = Scratch::new();
    let cfg = s.config("");
    let o = agent(&cfg, &["snapshot"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("the snapshot job is not configured: add a [snapshots] section"),
        "{}",
        text(&o)
    );
}

#[test]
fn the_shipped_agent_toml_uses_only_real_keys() {
    // On a test machine its files do not exist; every other kind of problem is a bug in the doc.
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
    let o = agent(&shipped, &["check-config"]);
    let out = text(&o);
    let problems: Vec<&str> = out.lines().filter(|l| l.contains("agent.toml:")).collect();
    assert!(
        !problems.is_empty(),
        "expected missing-file problems on a test machine:\n{out}"
    );
    for p in problems {
        assert!(
            p.contains("cannot read") || p.contains("secret file"),
            "config/agent.toml has a problem other than a missing file: {p}\n{out}"
        );
    }
}

/// `check-config` of `body` with these drop-ins (name, text).
fn check_with(s: &Scratch, body: &str, dropins: &[(&str, &str)]) -> (i32, String) {
    std::fs::create_dir_all(s.path("agent.d")).unwrap();
    for (name, text) in dropins {
        std::fs::write(s.path(&format!("agent.d/{name}")), text).unwrap();
    }
    check(s, body)
}

fn assert_has_all<S: AsRef<str>>(out: &str, wants: &[S]) {
    for w in wants {
        assert!(
            out.contains(w.as_ref()),
            "expected {:?} in:\n{out}",
            w.as_ref()
        );
    }
}

/// `[backup]` that is valid but for `connection` (local destination, a public key).
fn backup_section(s: &Scratch, connection: &str) -> String {
    let key = s.secret("keys/pub.asc", "not checked here");
    format!(
        "[[destinations]]\nname = \"local\"\ntype = \"filesystem\"\npath = \"/srv/x\"\n\n\
         [backup]\ndestinations = [\"local\"]\nencrypt_to = [\"{}\"]\nconnection = {connection}\n",
        key.display()
    )
}

#[test]
fn a_password_on_a_broken_line_is_never_echoed() {
    let s = Scratch::new();
    let (code, out) = check_with(
        &s,
        "",
        &[
            // The quote left open: the TOML error is at the end of the line.
            (
                "10-open.toml",
                "[backup]\nconnection = \"host=/x password=Hunter2Secret\n",
            ),
            // A type error quotes the value it refuses.
            (
                "20-type.toml",
                "[backup]\nretention_days = \"password=Hunter2Secret\"\n",
            ),
            // An unknown key named like a secret.
            (
                "30-unknown.toml",
                "[backup]\npassword = \"Hunter2Secret\"\n",
            ),
            // An unterminated multi-line string: the password is on a continuation line.
            (
                "40-multiline.toml",
                "[backup]\nconnection = \"\"\"host=/x\nHunter2Secret",
            ),
            // URL credentials, then junk after the value.
            (
                "50-url.toml",
                "[backup]\nconnection = \"postgresql://u:Hunter2Secret@h/db\" sslmode\n",
            ),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert_has_all(
        &out,
        &[
            "5 configuration problems",
            "agent.d/10-open.toml:2:",
            "invalid basic string",
            "agent.d/20-type.toml:2:18: invalid type: string \"<redacted>\", expected u32",
            "agent.d/30-unknown.toml:2:1: unknown field `password`",
            "agent.d/40-multiline.toml:3:",
            "agent.d/50-url.toml:2:",
            "| connection = <redacted>",
            "| password = <redacted>",
        ],
    );
    assert!(!out.contains("Hunter2"), "a password leaked:\n{out}");
}

#[test]
fn a_password_in_connection_is_refused_without_echoing_it() {
    let s = Scratch::new();
    let body = backup_section(
        &s,
        "\"host=/var/run/postgresql user=postgres password=Hunter2Secret\"",
    );
    let (code, out) = check_with(
        &s,
        &body,
        &[(
            "50-url.toml",
            "[backup]\nconnection = \"postgresql://postgres:Hunter2Secret@db.internal/app\"\n",
        )],
    );
    assert_eq!(code, 2, "{out}");
    let l = line_of(&s, "connection =");
    assert_has_all(
        &out,
        &[
            format!("agent.toml:{l}:14: `connection` holds a password"),
            "agent.d/50-url.toml:2:14: `connection` holds a password".to_owned(),
            "~/.pgpass".to_owned(),
            "PGPASSFILE".to_owned(),
            "peer or cert authentication".to_owned(),
        ],
    );
    assert!(!out.contains("Hunter2"), "the password leaked:\n{out}");
}

#[test]
fn unknown_conninfo_keywords_and_bad_sslmodes_are_config_errors() {
    let s = Scratch::new();
    let body = backup_section(&s, "\"host=/var/run/postgresql sslmode=bogus\"");
    let (code, out) = check_with(
        &s,
        &body,
        &[(
            "50-typo.toml",
            "[backup]\nconnection = \"host=/var/run/postgresql sslmod=require\"\n",
        )],
    );
    assert_eq!(code, 2, "{out}");
    let l = line_of(&s, "connection =");
    assert_has_all(
        &out,
        &[
            format!("agent.toml:{l}:14: `connection`: the value of `sslmode` is not an sslmode libpq knows"),
            "disable, allow, prefer, require, verify-ca, verify-full".to_owned(),
            "agent.d/50-typo.toml:2:14: `connection` is not a usable libpq connection string: unknown option `sslmod`".to_owned(),
        ],
    );
    // A good one passes.
    std::fs::remove_file(s.path("agent.d/50-typo.toml")).unwrap();
    let body = backup_section(
        &s,
        "\"host=/var/run/postgresql user=postgres sslmode=disable\"",
    );
    let (code, out) = check(&s, &body);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_secret_file_of_another_user_is_refused_naming_owner_and_fix() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to give a file to another user");
        return;
    }
    let s = Scratch::new();
    let secret = s.secret("secrets/pve-token", "s3cr3t-token-value");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(&secret, Some(nobody.uid), None).unwrap();
    let body = format!(
        "[snapshots]\napi_token_id = \"a@pve!b\"\napi_token_secret_file = \"{}\"\n",
        secret.display()
    );
    let (code, out) = check(&s, &body);
    assert_eq!(code, 2, "{out}");
    let l = line_of(&s, "api_token_secret_file");
    assert!(
        out.contains(&format!(
            "agent.toml:{l}:25: `api_token_secret_file`: secret file {} belongs to nobody (uid {}), not to root, the user the agent runs as",
            secret.display(),
            nobody.uid
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("hint: chown root {}", secret.display())),
        "{out}"
    );
    assert!(!out.contains("s3cr3t-token-value"), "{out}");

    // Run as root with a state_dir of that user, the agent acts as that
    // user (as the LUKS helper serves it): its files are accepted.
    std::fs::create_dir_all(s.path("state")).unwrap();
    nix::unistd::chown(&s.path("state"), Some(nobody.uid), None).unwrap();
    let (code, out) = check(&s, &body);
    assert_eq!(code, 0, "{out}");
}

/// `[proxmox]` is shared by `[snapshots]` and `[vm_backup]`; the connection
/// keys still written in `[snapshots]` work, and check-config says to move them.
#[test]
fn proxmox_connection_in_snapshots_still_works_with_a_hint_and_vm_backup_needs_proxmox() {
    let s = Scratch::new();
    let secret = s.secret("secrets/pve", "x\n");
    let ca = s.secret("ca.pem", "not read here\n");
    let legacy = format!(
        "[snapshots]\napi_token_id = \"a@pve!b\"\napi_token_secret_file = \"{}\"\nca_file = \"{}\"\n",
        secret.display(),
        ca.display()
    );
    let (code, out) = check(&s, &legacy);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note: [snapshots] still holds the Proxmox connection (api_token_id, api_token_secret_file, ca_file): move these keys to a [proxmox] section"),
        "{out}"
    );
    let shared = format!(
        "[proxmox]\napi_token_id = \"a@pve!b\"\napi_token_secret_file = \"{}\"\nca_file = \"{}\"\n\n[snapshots]\n\n\
         [[destinations]]\nname = \"d\"\ntype = \"filesystem\"\npath = \"{}\"\n\n\
         [vm_backup]\ndestinations = [\"d\"]\nencrypt_to = [\"{}\"]\n",
        secret.display(),
        ca.display(),
        s.path("fs").display(),
        ca.display()
    );
    let (code, out) = check(&s, &shared);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("note:"), "{out}");
    assert!(out.contains("vm-backup"), "{out}");
    // [vm_backup] without [proxmox]: a problem with the fix.
    let (code, out) = check(
        &s,
        &format!(
            "[[destinations]]\nname = \"d\"\ntype = \"filesystem\"\npath = \"{}\"\n\n[vm_backup]\ndestinations = [\"d\"]\nencrypt_to = [\"{}\"]\nmode = \"fast\"\n",
            s.path("fs").display(),
            ca.display()
        ),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("mode \"fast\" is not a vzdump mode"), "{out}");
    let (code, out) = check(
        &s,
        &format!(
            "[[destinations]]\nname = \"d\"\ntype = \"filesystem\"\npath = \"{}\"\n\n[vm_backup]\ndestinations = [\"d\", \"nowhere\"]\nencrypt_to = [\"{}\"]\n",
            s.path("fs").display(),
            ca.display()
        ),
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("[vm_backup] needs the Proxmox API connection"),
        "{out}"
    );
    assert!(out.contains("add [proxmox]"), "{out}");
}
