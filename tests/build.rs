//! Compiles the lab's XDP_PASS program (`bpf/xdp_pass.c`) with clang into
//! `$OUT_DIR/xdp_pass.o`, which `src/xdp.rs` embeds.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = manifest_dir.join("bpf").join("xdp_pass.c");
    let object = out_dir.join("xdp_pass.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=AXON_CLANG");
    let clang = env::var("AXON_CLANG").unwrap_or_else(|_| "clang".to_string());
    let output = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I/usr/include/x86_64-linux-gnu", "-c"])
        .arg(&source)
        .arg("-o")
        .arg(&object)
        .output();
    match output {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!("error: {clang} failed on {}:\n{}", source.display(), String::from_utf8_lossy(&out.stderr));
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: running {clang} (install clang, or set AXON_CLANG): {e}");
            std::process::exit(1);
        }
    }
}
