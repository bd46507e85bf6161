//! Anonymous network namespaces held by a file descriptor (so they vanish with
//! the test process, whatever happens), running code inside one from a
//! dedicated thread, and netlink sessions opened from inside one (a socket
//! stays in the namespace it was created in).

use crate::error::{IoContext, LabError, Result};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A network namespace, alive as long as this value (or a socket in it) is.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    label: String,
}

impl Netns {
    /// A fresh, empty namespace (only `lo`, down). Made on a throw-away thread
    /// so no thread of the test process changes namespace.
    pub fn new(label: &str) -> Result<Netns> {
        let fd = std::thread::scope(|s| {
            s.spawn(|| -> std::io::Result<OwnedFd> {
                // SAFETY: plain syscalls; unshare only affects this thread, which ends right after.
                unsafe {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let fd = libc::open(c"/proc/thread-self/ns/net".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(OwnedFd::from_raw_fd(fd))
                }
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
        })
        .ctx(|| format!("creating network namespace {label} (are we root?)"))?;
        Ok(Netns { fd, label: label.to_string() })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The descriptor (`CLOEXEC`; still open between fork and exec, which is
    /// where the client's `pre_exec` uses it).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A second descriptor of the namespace (keeps it alive on its own).
    pub fn dup_fd(&self) -> Result<OwnedFd> {
        self.fd.try_clone().map_err(|e| LabError::io(format!("duplicating the fd of namespace {}", self.label), e))
    }

    /// Writes `/proc/sys/<key>` of this namespace (`net/ipv4/conf/all/forwarding`).
    /// `/proc/sys/net` shows the namespace of the thread that opens it.
    pub fn sysctl_write(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        self.run(|| std::fs::write(&path, value))?.ctx(|| format!("writing {value} to {path} in {}", self.label))
    }

    /// Reads `/proc/sys/<key>` of this namespace, trimmed.
    pub fn sysctl_read(&self, key: &str) -> Result<String> {
        let path = format!("/proc/sys/{key}");
        let text = self.run(|| std::fs::read_to_string(&path))?.ctx(|| format!("reading {path} in {}", self.label))?;
        Ok(text.trim().to_string())
    }

    /// The namespace's inode number (what `/proc/<pid>/ns/net` links to).
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::from(self.fd.try_clone().map_err(|e| LabError::io("duplicating a netns fd", e))?);
        Ok(f.metadata().map_err(|e| LabError::io("stat of a netns fd", e))?.ino())
    }

    /// Moves the *calling thread* into this namespace. Only for threads the
    /// lab owns (servers, helpers) — never a test's own thread.
    pub fn enter_current_thread(&self) -> Result<()> {
        // SAFETY: setns on a valid namespace fd; affects only the calling thread.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(LabError::io(
                format!("entering network namespace {}", self.label),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                self.enter_current_thread()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(LabError::Setup(format!("thread in namespace {} panicked", self.label))))
        })
    }

    /// Runs `f` with an rtnetlink handle whose socket lives in this namespace.
    pub fn netlink<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(rtnetlink::Handle) -> Fut + Send,
        Fut: Future<Output = std::result::Result<T, rtnetlink::Error>>,
    {
        let label = self.label.clone();
        let nl_err = move |message: String| LabError::Netlink { what: format!("{what} in {label}"), message };
        self.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| nl_err(format!("tokio runtime: {e}")))?;
            rt.block_on(async {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(|e| nl_err(format!("netlink socket: {e}")))?;
                let conn_task = tokio::spawn(conn);
                let out = f(handle).await.map_err(|e| nl_err(e.to_string()));
                conn_task.abort();
                out
            })
        })?
    }
}
