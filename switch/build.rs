//! Builds the XDP program (`bpf/xsk_redirect.bpf.c`) with clang into `$OUT_DIR`, where
//! `src/xdp.rs` embeds it. `-g` is required: libbpf needs the BTF it produces.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/xsk_redirect.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("xsk_redirect.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch_include = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{arch_include}"))
        .args(["-c", src, "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to build {src} ({s}); run scripts/install-deps"),
        Err(e) => panic!("cannot run {clang} to build {src}: {e}; run scripts/install-deps"),
    }
}
