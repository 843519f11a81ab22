//! The testbed's API server, ClusterIPs and pod IPs are reachable only from inside its network
//! namespaces (it never touches the host's network). A test thread joins node 1's namespace before
//! it opens any socket. `setns(2)` changes only the calling thread; threads it starts later (tokio's
//! blocking pool, the cleanup thread) inherit it. `#[tokio::test]` runs everything on the test's own
//! thread, so all of a test's connections are made from inside the testbed.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use crate::error::{Error, Result};

pub(crate) fn enter(path: &str) -> Result<()> {
    let err = |source| Error::Netns {
        path: path.to_string(),
        source,
    };
    let target = File::open(path).map_err(err)?;
    let current = std::fs::metadata("/proc/thread-self/ns/net").map_err(err)?;
    let wanted = target.metadata().map_err(err)?;
    if current.ino() == wanted.ino() && current.dev() == wanted.dev() {
        return Ok(());
    }
    // SAFETY: setns is given a valid, open namespace file descriptor; it affects this thread only.
    let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}
