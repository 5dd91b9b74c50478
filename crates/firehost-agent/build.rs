//! Links the `firehost-agent` binary statically (static-pie) on glibc.
//!
//! The agent is copied into guest images as `/sbin/init`, often into a tree
//! with no C library, so the binary users get from a plain `cargo build`
//! must run without a dynamic loader. Stable cargo has no per-binary
//! `crt-static` (`-C target-feature=+crt-static` in RUSTFLAGS would reach
//! every crate, and proc-macros and the CLI, which dlopens libnftables,
//! must stay dynamic), so this does by linker arguments, for this one
//! binary only, what `crt-static` does:
//!
//! - `-static-pie`: a position-independent executable with no interpreter
//!   (rustc already asks for `-pie`; every object is PIC);
//! - the system libraries rustc names (`-lc`, `-lgcc_s`, …) resolve to
//!   small linker scripts in `OUT_DIR` that point at the static archives
//!   (`libc.a`, `libgcc_eh.a` for the unwinder), because rustc puts
//!   `-Bdynamic` in front of them. A `-L` from a link argument applies to
//!   every `-l`, and comes before the compiler's own search directories.
//!
//! Tests and the library link as usual. `FIREHOST_AGENT_DYNAMIC=1` turns
//! this off (a host without glibc's static archives, `libc6-dev`); musl
//! targets and `crt-static` builds are static already and are left alone.

use std::path::Path;

/// rustc's system libraries for linux-gnu, and the archive each stands for.
const STATIC_STAND_INS: &[(&str, &str)] = &[
    ("gcc_s", "-lgcc_eh"),
    ("c", "-l:libc.a"),
    ("m", "-l:libm.a"),
    ("dl", "-l:libdl.a"),
    ("pthread", "-l:libpthread.a"),
    ("rt", "-l:librt.a"),
    ("util", "-l:libutil.a"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FIREHOST_AGENT_DYNAMIC");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let already_static = env("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    let glibc_linux = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if !glibc_linux || already_static || !env("FIREHOST_AGENT_DYNAMIC").is_empty() {
        return;
    }
    let out = env("OUT_DIR");
    let dir = Path::new(&out).join("static-libs");
    if let Err(e) = write_stand_ins(&dir) {
        // A build script's panic is its error report.
        panic!(
            "cannot write the static-link scripts in {}: {e}",
            dir.display()
        );
    }
    println!(
        "cargo:rustc-link-arg-bin=firehost-agent=-L{}",
        dir.display()
    );
    println!("cargo:rustc-link-arg-bin=firehost-agent=-static-pie");
}

fn write_stand_ins(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (lib, archive) in STATIC_STAND_INS {
        std::fs::write(
            dir.join(format!("lib{lib}.so")),
            format!("INPUT({archive})\n"),
        )?;
    }
    Ok(())
}
