//! Copies the clap definition in src/main.rs (without its inner `//!` doc,
//! which `include!` rejects) to OUT_DIR, so examples/gen-man.rs renders the
//! man page and shell completions from the real CLI instead of a copy of it.
//! If the `Cli` type moves into the library, this script can go.

fn main() {
    println!("cargo:rerun-if-changed=src/main.rs");
    let src = std::fs::read_to_string("src/main.rs").expect("build.rs: reading agent/src/main.rs");
    let body: String = src
        .lines()
        .filter(|l| !l.starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("build.rs: OUT_DIR unset"))
        .join("main_cli.rs");
    std::fs::write(&out, body).expect("build.rs: writing the CLI copy to OUT_DIR");
}
