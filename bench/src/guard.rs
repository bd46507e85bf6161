//! Ctrl-C and SIGTERM: the run is torn down (helpers killed by pid, the
//! lab swept) before the process exits. Drop guards cover normal exits and
//! panics; this covers signals, which would skip them.

use crate::sys;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);
/// Held while a lab resource is created, and by the signal path from its
/// sweep to the exit: nothing can be created after the sweep has run.
static CREATING: Mutex<()> = Mutex::new(());
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether a signal is tearing the run down (drop guards then leave the
/// work to the sweep).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Call before creating a namespace, cgroup or process of the lab and hold
/// the guard until it is created (and its pid registered).
pub fn creating() -> anyhow::Result<MutexGuard<'static, ()>> {
    let guard = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    if stopping() {
        drop(guard);
        anyhow::bail!("interrupted");
    }
    Ok(guard)
}

/// Remembers a helper so a signal can kill it.
pub fn register_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

/// The helper was reaped; its pid may be reused.
pub fn forget_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|&p| p != pid);
}

extern "C" fn on_signal(_: libc::c_int) {
    let fd = PIPE_WR.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; one byte from a static.
        unsafe { libc::write(fd, b"x".as_ptr() as *const libc::c_void, 1) };
    }
}

/// On SIGINT/SIGTERM: kill registered helpers, run `cleanup`, exit 130.
/// A handler (not a blocked mask) so that children, which inherit masks
/// across exec but not handlers, still get their signals.
pub fn install(cleanup: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    PIPE_WR.store(fds[1], Ordering::Relaxed);
    // SAFETY: the read end is ours alone from here.
    let mut rd = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        if rd.read_exact(&mut b).is_ok() {
            eprintln!("\naxon-bench: interrupted, cleaning up the lab...");
            STOPPING.store(true, Ordering::SeqCst);
            // Kept until exit: whatever is being created finishes first, and
            // nothing new starts after the sweep.
            let _held = CREATING.lock().unwrap_or_else(|p| p.into_inner());
            let pids = CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for pid in pids {
                sys::signal(pid, libc::SIGKILL);
            }
            cleanup();
            std::process::exit(130);
        }
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
