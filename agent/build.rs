//! Copies the clap definition in src/main.rs (without its inner `//!` doc,
//! which `include!` rejects) to OUT_DIR, so examples/gen-man.rs renders the
//! man page and shell completions from the real CLI instead of a copy of it.
//! If the `Cli` type moves into the library, that part can go.
//!
//! Also packs the ~57 000 relative relocations of the PIE binaries (DT_RELR,
//! glibc >= 2.36, i.e. Debian 12): the 1.4 MB relocation table the loader
//! reads at every start shrinks to ~20 KB, and its pages no longer stay
//! resident in an idle daemon. Still position-independent (ASLR) with full
//! RELRO (docs/adr/0011-binary-size.md).

fn main() {
    println!("cargo:rerun-if-changed=src/main.rs");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
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
