//! Shutdown signalling, as in mini-redis: the server holds a broadcast sender and each
//! connection handler a [`Shutdown`] receiver; dropping the sender tells every handler to stop.

use tokio::sync::broadcast;

/// Listens for the server's shutdown signal.
#[derive(Debug)]
pub struct Shutdown {
    /// True once the signal has been received (it is only delivered once).
    is_shutdown: bool,
    /// The receiving half; the server drops the sender to signal.
    notify: broadcast::Receiver<()>,
}

impl Shutdown {
    pub fn new(notify: broadcast::Receiver<()>) -> Self {
        Shutdown {
            is_shutdown: false,
            notify,
        }
    }

    pub fn is_shutdown(&self) -> bool {
        self.is_shutdown
    }

    /// Waits for the signal (returns at once if it already came).
    pub async fn recv(&mut self) {
        if self.is_shutdown {
            return;
        }
        // A closed channel (the sender dropped) is the signal.
        let _ = self.notify.recv().await;
        self.is_shutdown = true;
    }
}

/// Waits for SIGTERM (systemd stop) or SIGINT (Ctrl-C); the name of the one that came.
/// SIGHUP is logged and ignored: it never ends the daemon.
pub async fn signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Handled so that its default action (exit) never ends the daemon; the config is read
    // once at start, so there is nothing to reload: a restart applies a new one.
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => log::info!(
                "SIGHUP: ignored (the config is read at start only; restart the service to apply a new one)"
            ),
        }
    }
}
