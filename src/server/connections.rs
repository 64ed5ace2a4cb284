//! The open socket connections, so that the accept loop never waits for a slot: at the
//! overall cap (`limits.max_connections`) or the peer user's cap
//! (`limits.max_connections_per_uid`), a new connection takes the slot of the connection
//! idle the longest (no request in flight; a line being trickled in counts as idle), which
//! is told why and closed. When every connection has work in flight the new one is refused.
//! A user cannot so take every slot, and idle or slow clients cannot lock others out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::queue::CancelToken;

/// One connection's requests still running or queued, by id.
pub type InFlight = Arc<Mutex<HashMap<String, CancelToken>>>;

/// Every open connection, shared by the accept loop and the handlers.
#[derive(Debug)]
pub struct Connections {
    open: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    max_total: usize,
    max_per_uid: usize,
}

#[derive(Debug)]
struct Entry {
    uid: u32,
    in_flight: InFlight,
    activity: Arc<Activity>,
    /// Wakes the handler to close the connection.
    close: Arc<Notify>,
}

/// When a connection last sent a complete line (or opened).
#[derive(Debug)]
pub struct Activity(Mutex<Instant>);

impl Activity {
    pub fn touch(&self) {
        *self.0.lock().unwrap() = Instant::now();
    }

    pub fn idle_for(&self) -> Duration {
        self.0.lock().unwrap().elapsed()
    }
}

/// A connection's place in [`Connections`]; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    pub id: u64,
    pub uid: u32,
    pub in_flight: InFlight,
    pub activity: Arc<Activity>,
    /// Notified when the connection was closed to make room for another.
    pub close: Arc<Notify>,
    connections: Arc<Connections>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.open.lock().unwrap().remove(&self.id);
    }
}

impl Connections {
    pub fn new(max_total: usize, max_per_uid: usize) -> Arc<Self> {
        Arc::new(Connections {
            open: Mutex::default(),
            next_id: AtomicU64::new(1),
            max_total,
            max_per_uid,
        })
    }

    /// A slot for a new connection of user `uid`, closing an idle connection if needed;
    /// Err says why there is none.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, String> {
        let mut open = self.open.lock().unwrap();
        let of_uid = open.values().filter(|e| e.uid == uid).count();
        if of_uid >= self.max_per_uid {
            evict_idlest(&mut open, Some(uid)).ok_or_else(|| {
                format!(
                    "user {uid} has {of_uid} connections open, each with a request in flight; \
                     the limit is {}",
                    self.max_per_uid
                )
            })?;
        } else if open.len() >= self.max_total {
            evict_idlest(&mut open, None).ok_or_else(|| {
                format!(
                    "{} connections are open, each with a request in flight; try again later",
                    open.len()
                )
            })?;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            id,
            uid,
            in_flight: InFlight::default(),
            activity: Arc::new(Activity(Mutex::new(Instant::now()))),
            close: Arc::new(Notify::new()),
            connections: self.clone(),
        };
        let entry = Entry {
            uid,
            in_flight: slot.in_flight.clone(),
            activity: slot.activity.clone(),
            close: slot.close.clone(),
        };
        open.insert(id, entry);
        Ok(slot)
    }

    /// Connections open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.lock().unwrap().len()
    }
}

/// Closes the connection (of `uid`, or of anyone) that has nothing in flight and has been
/// idle the longest; its slot is free at once. None when there is no such connection.
fn evict_idlest(open: &mut HashMap<u64, Entry>, uid: Option<u32>) -> Option<()> {
    let (&id, _) = open
        .iter()
        .filter(|(_, e)| uid.is_none_or(|u| e.uid == u))
        .filter(|(_, e)| e.in_flight.lock().unwrap().is_empty())
        .max_by_key(|(_, e)| e.activity.idle_for())?;
    let entry = open.remove(&id).expect("found above");
    // A stored permit: the handler sees it even if it is not waiting right now.
    entry.close.notify_one();
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_closes_the_idlest_connection_without_work() {
        let c = Connections::new(3, 2);
        let a = c.admit(1).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.admit(1).unwrap();
        // Over uid 1's cap: a, idle the longest, makes room.
        let a2 = c.admit(1).unwrap();
        assert_eq!(c.len(), 2);
        let woken = a.close.notified();
        tokio::pin!(woken);
        assert!(futures_ready(woken.as_mut()));
        // b and a2 busy: user 1 is refused; another user takes the last slot.
        for s in [&b, &a2] {
            s.in_flight
                .lock()
                .unwrap()
                .insert("r".into(), CancelToken::default());
        }
        let refused = c.admit(1).unwrap_err();
        assert!(refused.contains("user 1 has 2 connections"), "{refused}");
        let other = c.admit(2).unwrap();
        assert_eq!(c.len(), 3);
        // Full, and only `other` is idle: it goes for a third user.
        let third = c.admit(3).unwrap();
        assert!(futures_ready(std::pin::pin!(other.close.notified())));
        drop(third);
        assert_eq!(c.len(), 2);
    }

    /// Whether a future is ready at its first poll.
    fn futures_ready<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx).is_ready()
    }
}
