//! Socket activation: the listening socket that systemd's `bitnetd.socket` passes
//! (`LISTEN_FDS`, sd_listen_fds(3)). systemd then owns the socket file: its path, mode and
//! group come from the socket unit, and the daemon neither changes nor removes it.

use std::io;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the daemon runs on an inherited socket (a fact about the whole process).
static INHERITED: AtomicBool = AtomicBool::new(false);

/// The listening Unix socket systemd passed, if it passed one. An inherited descriptor that
/// is not a Unix stream socket is an error (the socket unit is misconfigured).
/// Reads and clears `LISTEN_FDS`/`LISTEN_PID`, so it answers `Some` at most once.
pub fn inherited_listener() -> io::Result<Option<UnixListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() > 1 {
        log::warn!(
            "systemd passed {} sockets; only the first is used",
            fds.len()
        );
    }
    let listener = fds.take_unix_listener(0)?;
    INHERITED.store(listener.is_some(), Ordering::Relaxed);
    Ok(listener)
}

/// Whether the socket came from systemd (then its file is not the daemon's to remove).
pub fn is_inherited() -> bool {
    INHERITED.load(Ordering::Relaxed)
}
