//! Compiles every `bpf/*.c` into `$OUT_DIR/<name>.o` with clang, so the crate
//! can embed the objects (see `src/objects.rs`).

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG_ENV: &str = "AXON_CLANG";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let lib_dir = manifest_dir.join("lib");

    println!("cargo:rerun-if-env-changed={CLANG_ENV}");
    println!("cargo:rerun-if-changed={}", lib_dir.display());
    for header in files_with_extension(&lib_dir, "h") {
        println!("cargo:rerun-if-changed={}", header.display());
    }

    let sources = files_with_extension(&manifest_dir, "c");
    // A new .c file must trigger a rebuild too.
    println!("cargo:rerun-if-changed={}", manifest_dir.display());
    let clang = env::var(CLANG_ENV).unwrap_or_else(|_| "clang".to_string());
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
        let stem = source.file_stem().expect("a .c file has a stem").to_string_lossy();
        let object = out_dir.join(format!("{stem}.o"));
        if let Err(message) = compile(&clang, source, &lib_dir, &object) {
            eprintln!("error: {message}");
            std::process::exit(1);
        }
    }
}

/// Files in `dir` (not recursive) ending in `.ext`, sorted for a stable build.
fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => panic!("reading {}: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn compile(clang: &str, source: &Path, lib_dir: &Path, object: &Path) -> Result<(), String> {
    let output = Command::new(clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(format!("-I{}", lib_dir.display()))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object)
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                format!("`{clang}` not found: the BPF programs need clang; install clang: make deps")
            }
            _ => format!("running `{clang}`: {e}"),
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "clang failed to compile {} ({}):\n{}",
        source.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    ))
}
