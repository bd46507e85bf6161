//! Every program of every embedded object passes this kernel's verifier.
//!
//! Loads each object with its maps pinned in a fresh directory under
//! /sys/fs/bpf (removed afterwards) and loads every program in it, printing
//! each program's verified-instruction count so growth is visible. Needs
//! root and a bpffs at /sys/fs/bpf; nothing is attached.

use axon_bpf::objects::{NODEPORT, SOCK_LB, XDP};
use aya::programs::Program;
use aya::EbpfLoader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A unique pin directory, removed with everything in it on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = Path::new("/sys/fs/bpf").join(format!(
            "axon-verifier-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("creating a pin directory under /sys/fs/bpf (root and a bpffs needed)");
        PinDir(path)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_program(name: &str, program: &mut Program) -> Result<(), String> {
    let result = match program {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        other => return Err(format!("{name}: unexpected program type {:?}", other.prog_type())),
    };
    result.map_err(|e| match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            // The end of the log says why; the whole of it can be megabytes.
            let tail: String =
                log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            format!("{name}: {io_error}\n{tail}")
        }
        other => format!("{name}: {other}"),
    })
}

fn verify_object(tag: &str, object: &[u8]) -> Vec<String> {
    let dir = PinDir::new(tag);
    let mut ebpf = match EbpfLoader::new().default_map_pin_directory(&dir.0).load(object) {
        Ok(ebpf) => ebpf,
        Err(e) => return vec![format!("{tag}: loading the object: {e:?}")],
    };
    let mut failures = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        match load_program(name, program) {
            Ok(()) => {
                let insns = program.info().ok().and_then(|i| i.verified_instruction_count());
                eprintln!("{tag}/{name}: verified ({insns:?} instructions processed)");
            }
            Err(e) => failures.push(e),
        }
    }
    failures
}

#[test]
fn every_program_passes_the_verifier() {
    let mut failures = Vec::new();
    for (tag, object) in [("sock_lb", SOCK_LB), ("nodeport", NODEPORT), ("xdp", XDP)] {
        failures.extend(verify_object(tag, object));
    }
    assert!(failures.is_empty(), "verifier rejections:\n{}", failures.join("\n\n"));
}
