//! `cloudnx-luks-helper`: the privileged half of the LUKS duty
//! (docs/adr/0008-privileges.md), in its own binary so that only it links
//! libcryptsetup. Started by systemd per connection on
//! `/run/cloudnx-agent-luks-helper.sock`, or as a child of a root
//! `cloudnx-agent`: one JSON request on stdin, one JSON answer on stdout
//! (`cloudnx_agent::jobs::luks::helper_server::serve`).

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cloudnx-luks-helper [--config PATH]\n\
    Answers one JSON request {\"action\", \"volume\"} read from stdin with one JSON line on stdout.\n\
    It is started by cloudnx-agent-luks-helper.socket or by a root cloudnx-agent, not by hand.";

fn main() -> ExitCode {
    let mut config: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--config") => match args.next() {
                Some(p) => config = Some(PathBuf::from(p)),
                None => {
                    eprintln!("cloudnx-luks-helper: --config needs a path\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            Some("--version") => {
                println!("cloudnx-luks-helper {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Some("--help" | "-h") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("cloudnx-luks-helper: unexpected argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cloudnx-luks-helper: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    ExitCode::from(rt.block_on(cloudnx_agent::jobs::luks::helper_server::serve(config)))
}
