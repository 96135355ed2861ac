//! Render the man page (section 8) and bash/zsh/fish completions from the
//! binary's own clap definition into a directory, for the .deb
//! (scripts/build-deb): `cargo run --example gen-man -- OUT_DIR`.

use std::path::PathBuf;

/// The binary's `main.rs` (copied by build.rs), so `Cli` is the real definition.
#[allow(dead_code, unused_imports)]
mod binary {
    include!(concat!(env!("OUT_DIR"), "/main_cli.rs"));

    /// The clap command of `cloudnx-agent`.
    pub fn command() -> clap::Command {
        <Cli as clap::CommandFactory>::command()
    }
}

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args_os().nth(1).expect("usage: gen-man OUT_DIR"));
    std::fs::create_dir_all(out.join("completions"))?;
    let cmd = binary::command();

    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .render(&mut page)?;
    // clap_mangen lists the verbs; the files and units are what an operator
    // reaching for `man cloudnx-agent` looks up next.
    page.extend_from_slice(FILES_SECTION.as_bytes());
    std::fs::write(out.join("cloudnx-agent.8"), page)?;

    for (shell, name) in [
        (clap_complete::Shell::Bash, "cloudnx-agent"),
        (clap_complete::Shell::Zsh, "_cloudnx-agent"),
        (clap_complete::Shell::Fish, "cloudnx-agent.fish"),
    ] {
        let mut c = cmd.clone();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut c, "cloudnx-agent", &mut buf);
        std::fs::write(out.join("completions").join(name), buf)?;
    }
    Ok(())
}

const FILES_SECTION: &str = r#".SH FILES
.TP
\fI/etc/cloudnx\-agent/agent.toml\fR
The configuration; \fI*.toml\fR files in \fI/etc/cloudnx\-agent/agent.d/\fR are merged over it in name order.
.TP
\fI/var/lib/cloudnx\-agent/\fR
State: locks, metrics state, event outbox, audit log, drill spool (mode 0700, owned by the cloudnx\-agent user).
.TP
\fIcloudnx\-agent.service\fR, \fIcloudnx\-agent\-luks\-helper.socket\fR
The unprivileged daemon and the privileged helper it asks for device\-mapper work.
.SH EXIT STATUS
0 success, 1 the job ran and failed, 2 usage or configuration error.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBcryptsetup\fR(8), \fBpg_dump\fR(1), /usr/share/doc/cloudnx\-agent/operations.md
"#;
