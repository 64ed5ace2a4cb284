//! The Unix socket transport: JSON lines in, JSON lines out.
//!
//! Shaped like mini-redis's server: a [`Listener`] accepts and spawns one [`Handler`] per
//! connection. The accept loop never waits: [`Connections`] gives each new connection a slot,
//! closing the connection idle the longest when the overall or the peer user's cap is
//! reached, or refusing the new one with an error line when every connection has work in
//! flight. A handler reads lines until EOF, shutdown, an idle timeout (no request in flight
//! and no line for `idle_timeout_secs`) or a line that does not complete within
//! `line_timeout_secs` (a slow sender holding a slot); its writer task sends every event of
//! the connection's requests. A failed write means the client is gone: its requests are
//! cancelled within one layer of the forward pass. The connection's event channel is bounded
//! and the handler reads a line only when its reply has room, so a client that sends
//! without reading stalls itself, not the daemon's memory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::OwnedPermit;
use tokio::sync::{broadcast, mpsc};

use super::connections::{Connections, InFlight, Slot};
use super::protocol::{self, Command, ErrorCode, Event, Incoming, Status};
use super::queue::{CancelToken, ClientKey, Job, Queue};
use super::shutdown::Shutdown;
use super::{ServerInfo, activation};
use crate::config::Config;

/// Events waiting to be written, per connection; beyond this, reading stops.
const EVENTS_BUFFERED: usize = 64;
/// How often a half-closed connection with requests in flight is checked for a hang-up.
const HANGUP_CHECK: Duration = Duration::from_millis(50);

/// The accept loop's state.
pub struct Listener {
    /// The bound socket.
    pub listener: UnixListener,
    /// Where requests go.
    pub queue: Queue,
    /// Limits, defaults and the system prompt for parsing requests.
    pub config: Arc<Config>,
    /// What `status` reports.
    pub info: Arc<ServerInfo>,
    /// The open connections and their slots.
    pub connections: Arc<Connections>,
    /// Dropped at shutdown: every handler's [`Shutdown`] then fires.
    pub notify_shutdown: broadcast::Sender<()>,
    /// Cloned into each handler; the server knows all handlers are done when every clone
    /// is dropped and its receiver returns `None`.
    pub shutdown_complete_tx: mpsc::Sender<()>,
}

/// One client connection.
struct Handler {
    /// Lines from the client.
    reader: BufReader<OwnedReadHalf>,
    /// Where this connection's events go; the writer task writes them in order.
    out: mpsc::Sender<Event>,
    /// This connection's place among the open ones: its id, peer uid, requests in flight.
    slot: Slot,
    queue: Queue,
    config: Arc<Config>,
    info: Arc<ServerInfo>,
    shutdown: Shutdown,
    /// Held until the handler is done (see [`Listener::shutdown_complete_tx`]).
    _shutdown_complete: mpsc::Sender<()>,
}

/// One read from the client.
enum Line {
    /// A complete line is in the buffer.
    Data,
    /// The line was longer than the limit and was skipped.
    TooLong,
    /// The client closed its side.
    Eof,
}

/// Why a handler stops reading.
enum Stop {
    /// EOF, shutdown, or the writer gone: nothing to tell the client.
    Quietly,
    /// The daemon closes the connection and tells the client why.
    Closed(String),
}

impl Listener {
    pub fn new(
        listener: UnixListener,
        queue: Queue,
        config: Arc<Config>,
        info: Arc<ServerInfo>,
        notify_shutdown: broadcast::Sender<()>,
        shutdown_complete_tx: mpsc::Sender<()>,
    ) -> Self {
        let limits = &config.limits;
        let connections = Connections::new(limits.max_connections, limits.max_connections_per_uid);
        Listener {
            listener,
            queue,
            config,
            info,
            connections,
            notify_shutdown,
            shutdown_complete_tx,
        }
    }

    /// Accepts connections until an accept fails for good.
    pub async fn run(&mut self) -> io::Result<()> {
        loop {
            let stream = self.accept().await?;
            let uid = match stream.peer_cred() {
                Ok(cred) => cred.uid(),
                Err(e) => {
                    log::warn!("a connection without peer credentials ({e}): closed");
                    continue;
                }
            };
            let slot = match self.connections.admit(uid) {
                Ok(slot) => slot,
                Err(why) => {
                    log::info!("connection of uid {uid} refused: {why}");
                    let line = Event::error(None, ErrorCode::Busy, why).to_line();
                    // A new socket's send buffer has room for one line; never wait for it.
                    let _ = stream.try_write(&line);
                    continue;
                }
            };
            let (read, write) = stream.into_split();
            let (out, out_rx) = mpsc::channel(EVENTS_BUFFERED);
            let writer = tokio::spawn(write_events(write, out_rx, slot.in_flight.clone()));
            let mut handler = Handler {
                reader: BufReader::new(read),
                out,
                slot,
                queue: self.queue.clone(),
                config: self.config.clone(),
                info: self.info.clone(),
                shutdown: Shutdown::new(self.notify_shutdown.subscribe()),
                _shutdown_complete: self.shutdown_complete_tx.clone(),
            };
            tokio::spawn(async move {
                if let Err(e) = handler.run().await {
                    log::debug!("connection {}: {e}", handler.slot.id);
                }
                let Handler {
                    out,
                    slot,
                    _shutdown_complete,
                    ..
                } = handler;
                // The writer ends once every request of the connection has sent its last event.
                drop(out);
                let _ = writer.await;
                drop(slot);
                drop(_shutdown_complete);
            });
        }
    }

    /// Accepts with a short back-off on errors such as running out of descriptors.
    async fn accept(&mut self) -> io::Result<UnixStream> {
        let mut backoff = 1;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => return Ok(stream),
                Err(e) if backoff > 64 => return Err(e),
                Err(e) => log::warn!("accept: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(backoff * 10)).await;
            backoff *= 2;
        }
    }
}

impl Handler {
    async fn run(&mut self) -> io::Result<()> {
        let max = self.config.limits.max_line_bytes;
        let mut buf = Vec::new();
        loop {
            // Each line gets at most one immediate reply: its room is taken before reading.
            let reply = tokio::select! {
                permit = self.out.clone().reserve_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return Ok(()), // the writer is gone: so is the client
                },
                _ = self.shutdown.recv() => return Ok(()),
            };
            let line = match self.next_line(&mut buf, max).await? {
                Ok(line) => line,
                Err(Stop::Quietly) => return Ok(()),
                Err(Stop::Closed(why)) => {
                    log::debug!("connection {}: {why}", self.slot.id);
                    reply.send(Event::error(None, ErrorCode::Closed, why));
                    return Ok(());
                }
            };
            match line {
                Line::Eof => {
                    self.watch_hangup().await;
                    return Ok(());
                }
                Line::TooLong => {
                    let msg = format!("the line is longer than {max} bytes");
                    reply.send(Event::error(None, ErrorCode::TooLong, msg));
                }
                Line::Data => {
                    let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
                    // Blank lines (keep-alives, a stray newline) are skipped without a reply.
                    if !line.iter().all(u8::is_ascii_whitespace) {
                        let line = line.to_vec();
                        self.handle(&line, reply);
                    }
                }
            }
            self.slot.activity.touch();
        }
    }

    /// Waits for the first byte of the next line (closing an idle connection), then for the
    /// whole line (closing a connection whose line takes too long).
    async fn next_line(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<Result<Line, Stop>> {
        let limits = &self.config.limits;
        let idle = Duration::from_secs(limits.idle_timeout_secs);
        let line_time = Duration::from_secs(limits.line_timeout_secs);
        let started = loop {
            let idle_check = async {
                match idle.is_zero() {
                    true => std::future::pending().await,
                    false => {
                        tokio::time::sleep(idle.saturating_sub(self.slot.activity.idle_for())).await
                    }
                }
            };
            tokio::select! {
                filled = self.reader.fill_buf() => {
                    filled?;
                    break Instant::now();
                }
                _ = idle_check => {
                    // Waiting for a reply is not idleness.
                    if self.slot.in_flight.lock().unwrap().is_empty()
                        && self.slot.activity.idle_for() >= idle
                    {
                        let why = format!("closed after {} s without a request", idle.as_secs());
                        return Ok(Err(Stop::Closed(why)));
                    }
                    self.slot.activity.touch();
                }
                _ = self.slot.close.notified() => return Ok(Err(evicted(&self.slot))),
                _ = self.shutdown.recv() => return Ok(Err(Stop::Quietly)),
            }
        };
        tokio::select! {
            line = read_line(&mut self.reader, buf, max) => Ok(Ok(line?)),
            _ = tokio::time::sleep_until((started + line_time).into()) => {
                let why = format!(
                    "closed: a line must arrive whole within {} s of its first byte",
                    line_time.as_secs()
                );
                Ok(Err(Stop::Closed(why)))
            }
            _ = self.slot.close.notified() => Ok(Err(evicted(&self.slot))),
            _ = self.shutdown.recv() => Ok(Err(Stop::Quietly)),
        }
    }

    /// After EOF, while requests are in flight: a client that only shut its sending side
    /// still gets its answers; one that closed the connection has its requests cancelled at
    /// once (a prompt being evaluated writes nothing that could fail for a while).
    async fn watch_hangup(&mut self) {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        while !self.slot.in_flight.lock().unwrap().is_empty() {
            let stream: &UnixStream = self.reader.get_ref().as_ref();
            let mut fds = [PollFd::new(stream, PollFlags::empty())];
            if poll(&mut fds, Some(&zero)).is_ok_and(|_| fds[0].revents().contains(PollFlags::HUP))
            {
                log::debug!("connection {}: the client hung up", self.slot.id);
                for token in self.slot.in_flight.lock().unwrap().values() {
                    token.cancel();
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(HANGUP_CHECK) => {}
                _ = self.shutdown.recv() => return,
            }
        }
    }

    fn handle(&mut self, line: &[u8], reply: OwnedPermit<Event>) {
        let incoming = match protocol::parse_line(line, &self.config) {
            Ok(i) => i,
            Err(rejection) => {
                reply.send(rejection.event());
                return;
            }
        };
        match incoming {
            Incoming::Generate(request) => self.submit(*request, reply),
            Incoming::Cancel(id) => {
                let token = self.slot.in_flight.lock().unwrap().get(&id).cloned();
                match token {
                    Some(t) => t.cancel(),
                    None => {
                        let msg = format!("no request {id:?} is in flight on this connection");
                        reply.send(Event::error(Some(id), ErrorCode::BadRequest, msg));
                    }
                }
            }
            Incoming::Command(Command::Status, id) => {
                let status = self.status();
                reply.send(Event::Status {
                    id,
                    status: Box::new(status),
                });
            }
            Incoming::Command(Command::Health, id) => {
                let health = super::health(&self.queue);
                reply.send(Event::Health { id, health });
            }
        }
    }

    fn submit(&mut self, request: protocol::GenRequest, reply: OwnedPermit<Event>) {
        let id = request.id.clone();
        let in_flight = &self.slot.in_flight;
        if in_flight.lock().unwrap().contains_key(&id) {
            let msg = format!("a request {id:?} is already in flight on this connection");
            reply.send(Event::error(Some(id), ErrorCode::BadRequest, msg));
            return;
        }
        let (events, mut events_rx) = mpsc::unbounded_channel();
        let cancel = CancelToken::default();
        let job = Job {
            request,
            transport: "socket",
            client: ClientKey::Socket {
                uid: self.slot.uid,
                connection: self.slot.id,
            },
            events,
            cancel: cancel.clone(),
            arrived: Instant::now(),
            expires: None,
        };
        in_flight.lock().unwrap().insert(id.clone(), cancel.clone());
        if let Err(e) = self.queue.submit(job) {
            in_flight.lock().unwrap().remove(&id);
            let (code, msg) = e.answer();
            reply.send(Event::error(Some(id), code, msg));
            return;
        }
        // Forwards the job's events into the connection's stream; ends when the engine
        // drops the job (its last event sent) or when the writer is gone.
        let out = self.out.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                if event.is_final() {
                    // Before the client sees it: it may reuse the id at once.
                    forget(&in_flight, &id, &cancel);
                }
                if out.send(event).await.is_err() {
                    break;
                }
            }
            forget(&in_flight, &id, &cancel);
        });
    }

    fn status(&self) -> Status {
        super::status(&self.info, &self.queue)
    }
}

/// Why a connection made room for another.
fn evicted(slot: &Slot) -> Stop {
    Stop::Closed(format!(
        "closed to make room for a new connection: this one was idle for {} s",
        slot.activity.idle_for().as_secs()
    ))
}

/// Removes a finished request from its connection's table, unless the id already names a
/// newer request.
fn forget(in_flight: &InFlight, id: &str, cancel: &CancelToken) {
    let mut map = in_flight.lock().unwrap();
    if map.get(id).is_some_and(|t| t.same_as(cancel)) {
        map.remove(id);
    }
}

/// Writes a connection's events until every sender is gone. If the client has gone away,
/// its requests are cancelled and the channel is closed, which the engine also notices.
async fn write_events(
    write: OwnedWriteHalf,
    mut events: mpsc::Receiver<Event>,
    in_flight: InFlight,
) {
    let mut write = BufWriter::new(write);
    while let Some(event) = events.recv().await {
        let result = async {
            write.write_all(&event.to_line()).await?;
            write.flush().await
        }
        .await;
        if let Err(e) = result {
            log::debug!("client gone ({e}): cancelling its requests");
            for token in in_flight.lock().unwrap().values() {
                token.cancel();
            }
            return;
        }
    }
}

/// Reads one line of at most `max` bytes into `buf` (without the newline). A longer line is
/// read to its end and dropped; a last line without newline counts as a line.
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Data,
            });
        }
        let (take, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, Some(i + 1)),
            None => (chunk.len(), None),
        };
        if !too_long && buf.len() + take <= max {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            too_long = true;
            buf.clear();
        }
        reader.consume(end.unwrap_or(take));
        if end.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Data });
        }
    }
}

/// Binds the socket: an old socket file is replaced only when connecting to it is refused
/// (no daemon listens there any more); then the file gets its configured mode and group
/// without following a symlink that may have been put at the path: the mode comes from the
/// umask at bind, the group from lchown(2). A socket passed by systemd is used as it is (see
/// [`activation`]).
pub fn bind(config: &Config) -> anyhow::Result<UnixListener> {
    use anyhow::{Context, bail};
    use std::os::unix::fs::FileTypeExt;
    if let Some(inherited) =
        activation::inherited_listener().context("taking the socket systemd passed (LISTEN_FDS)")?
    {
        inherited.set_nonblocking(true)?;
        log::info!(
            "listening on the socket passed by systemd (socket.path, mode and group are the socket unit's)"
        );
        return Ok(UnixListener::from_std(inherited)?);
    }
    let path = &config.socket.path;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket: set socket.path elsewhere",
                path.display()
            );
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!("another daemon is listening on {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("removing the stale socket {}", path.display());
                std::fs::remove_file(path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bail!(
                "{} exists and connecting to it fails ({e}): not removing it",
                path.display()
            ),
        }
    }
    // Resolved before binding: an unknown group leaves no socket file behind.
    let group = &config.socket.group;
    let gid = match group.is_empty() {
        true => None,
        false => Some(
            group_id(group, Path::new("/etc/group"))
                .with_context(|| format!("socket.group = {group:?}"))?,
        ),
    };
    let mode = config.socket_mode().expect("validated");
    // Only this thread runs while the socket is bound (the engine thread starts after), so
    // the process-wide umask cannot affect another file.
    let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(!mode & 0o777));
    let listener = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = listener.with_context(|| {
        format!(
            "binding {} (does its directory exist and is it writable?)",
            path.display()
        )
    })?;
    if let Some(gid) = gid
        && let Err(e) = std::os::unix::fs::lchown(path, None, Some(gid))
    {
        // The daemon does not start: the file it has just made must not stay behind.
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("giving {} to group {group}", path.display()));
    }
    Ok(listener)
}

/// A group's id, from a group file (`name:x:gid:members`).
fn group_id(name: &str, group_file: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(group_file)?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            (n == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| anyhow::anyhow!("no group {name:?} in {}", group_file.display()))
}

/// Removes the socket file at exit, unless systemd owns it.
pub fn remove(path: &PathBuf) {
    if activation::is_inherited() {
        return;
    }
    if let Err(e) = std::fs::remove_file(path) {
        log::warn!("removing {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_come_from_the_group_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("group");
        std::fs::write(&f, "root:x:0:\nbitnetd:x:998:pi,ops\n").unwrap();
        assert_eq!(group_id("bitnetd", &f).unwrap(), 998);
        assert!(group_id("nobody", &f).is_err());
    }
}
