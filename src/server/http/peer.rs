//! Who an HTTP connection belongs to, for the queue's fairness and per-client cap.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, UnixListener};

use crate::server::queue::ClientKey;

/// A connection's client: its peer address over TCP, its peer's uid on a Unix socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub ClientKey);

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer(ClientKey::HttpPeer(stream.remote_addr().ip()))
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        // Without credentials (not seen on Linux) the connection counts as root's: it still
        // shares one place in the round-robin instead of escaping the per-client cap.
        let uid = stream.io().peer_cred().map_or(0, |c| c.uid());
        Peer(ClientKey::HttpUid(uid))
    }
}
