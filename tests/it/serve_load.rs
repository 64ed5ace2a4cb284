//! The daemon under load: a hundred clients at once against a small queue, and a thousand
//! requests without memory growth. Nothing here is timed: the assertions are about outcomes
//! and counts, and the waits only bound a hung daemon.

use std::io::{BufRead, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};

use crate::daemon::{Client, Daemon, PATIENCE, SHORT_PROMPTS, long_request, request};
use serde_json::{Value, json};

#[test]
fn a_hundred_clients_at_once_each_get_exactly_one_outcome() {
    const CLIENTS: usize = 100;
    const DEPTH: usize = 4;
    let d = Daemon::start(&format!(
        "[limits]\nqueue_depth = {DEPTH}\nmax_connections = 128\nmax_connections_per_uid = 128\n"
    ));
    // A long request holds the engine, so that the hundred meet a queue with no room to spare.
    let mut holder = d.connect();
    holder.send(&long_request("hold"));
    assert!(holder.event()["token"].is_string());

    let barrier = Arc::new(Barrier::new(CLIENTS));
    let (handled_tx, handled_rx) = mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let socket = d.socket.clone();
            let barrier = barrier.clone();
            let handled = handled_tx.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(&socket);
                barrier.wait();
                // The daemon handles a connection's lines in order, so the health reply says
                // the request before it has been queued or refused.
                let health = json!({"cmd": "health", "id": format!("h{i}")});
                let lines = format!("{}\n{health}\n", request(&format!("c{i}"), "Count", 3));
                c.writer.write_all(lines.as_bytes()).unwrap();
                // Half-closed: the daemon answers what it has, then closes the connection.
                c.writer.shutdown(Shutdown::Write).unwrap();
                let mut events = Vec::new();
                let mut line = String::new();
                while c.reader.read_line(&mut line).expect("events in time") > 0 {
                    let e: Value = serde_json::from_str(&line).unwrap();
                    if e["health"].is_string() {
                        handled.send(()).unwrap();
                    }
                    events.push(e);
                    line.clear();
                }
                events
            })
        })
        .collect();
    drop(handled_tx);
    for _ in 0..CLIENTS {
        handled_rx
            .recv_timeout(PATIENCE)
            .expect("every request queued or refused");
    }
    // Only now may the queue move.
    holder.send(&json!({"cancel": "hold"}));
    let (_, held) = holder.finish("hold");

    let (mut completed, mut busy) = (0, 0);
    for (i, client) in clients.into_iter().enumerate() {
        let events = client.join().unwrap();
        let id = format!("c{i}");
        let (health, answer): (Vec<_>, Vec<_>) =
            events.into_iter().partition(|e| e["health"].is_string());
        assert_eq!(health, [json!({"id": format!("h{i}"), "health": "ok"})]);
        assert!(answer.iter().all(|e| e["id"] == id), "{answer:?}");
        // Tokens, then exactly one final event, and nothing after it.
        let finals = answer.iter().filter(|e| e["token"].is_null()).count();
        assert_eq!(finals, 1, "{id}: {answer:?}");
        let last = answer.last().unwrap();
        if last["done"] == true {
            let streamed: String = answer.iter().filter_map(|e| e["token"].as_str()).collect();
            assert_eq!(last["text"], streamed.as_str(), "{last}");
            assert_ne!(last["finish_reason"], "cancelled", "{last}");
            completed += 1;
        } else {
            assert_eq!(last["error"]["code"], "busy", "{last}");
            assert_eq!(answer.len(), 1, "{answer:?}");
            busy += 1;
        }
    }
    let held_throughout = held["finish_reason"] == "cancelled";
    eprintln!("{CLIENTS} clients: {completed} answered, {busy} busy (held: {held_throughout})");
    assert_eq!(completed + busy, CLIENTS);
    // Whatever the order of arrival, a full queue's worth always fits.
    assert!(completed >= DEPTH, "{completed} completed");
    if held_throughout {
        // The engine was held until every request was in: exactly the queue's room was served.
        assert_eq!(completed, DEPTH, "{held}");
    }

    // Healthy afterwards: idle (the engine clears `busy` just after the last answer went
    // out), nothing waiting, every request counted, and a new one is served.
    let start = std::time::Instant::now();
    let status = loop {
        let status = d.status();
        if status["busy"] == false || start.elapsed() > PATIENCE {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(status["queue_depth"], 0, "{status}");
    assert_eq!(status["busy"], false, "{status}");
    assert_eq!(status["requests"], completed as u64 + 1, "{status}");
    let mut c = d.connect();
    c.send(&json!({"cmd": "health"}));
    assert_eq!(c.event(), json!({"health": "ok"}));
    c.send(&request("after", "Hi", 2));
    assert_eq!(c.finish("after").1["done"], true);
    let log = d.log();
    assert_eq!(log.matches("finish error (busy").count(), busy, "{log}");
}

#[test]
fn memory_stays_flat_over_a_thousand_requests() {
    const CONNECTIONS: usize = 4;
    const REQUESTS: usize = 1000;
    let d = Daemon::start("");
    let idle = d.rss_kb();
    let run = |n: usize, tag: &str| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|w| {
                let socket = d.socket.clone();
                let tag = tag.to_string();
                std::thread::spawn(move || {
                    let mut c = Client::new(&socket);
                    for i in (w..n).step_by(CONNECTIONS) {
                        let id = format!("{tag}{i}");
                        let mut r = request(
                            &id,
                            SHORT_PROMPTS[i % SHORT_PROMPTS.len()],
                            1 + usize::from(i % 5 == 0),
                        );
                        // Sampled, not greedy, with its own seed: the sampler's paths too.
                        r["temperature"] = json!(0.8);
                        r["seed"] = json!(i);
                        c.send(&r);
                        assert_eq!(c.finish(&id).1["done"], true);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    };
    // Buffers that grow to their working size on the first requests are not a leak either.
    run(50, "warm");
    let warm = d.rss_kb();
    run(REQUESTS, "r");
    let after = d.rss_kb();
    eprintln!(
        "daemon RSS: idle {idle} kB, after 50 requests {warm} kB, after 1,000 more {after} kB"
    );
    assert!(
        after * 100 < warm * 101,
        "RSS grew from {warm} kB to {after} kB over {REQUESTS} requests"
    );
    assert_eq!(d.status()["requests"], (50 + REQUESTS) as u64);
}

#[test]
fn a_client_that_never_reads_its_replies_stalls_only_itself() {
    let d = Daemon::start("");
    let idle = d.rss_kb();
    // 100,000 status commands (1.7 MB in, some 35 MB of replies out), never read.
    let mut flood = d.connect();
    flood
        .writer
        .set_write_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let chunk = b"{\"cmd\":\"status\"}\n".repeat(1000);
    let mut sent = 0;
    while sent < 100_000 && flood.writer.write_all(&chunk).is_ok() {
        sent += 1000;
    }
    // The daemon stopped reading once the replies had nowhere to go.
    assert!(sent < 100_000, "the daemon took every line");
    let mut c = d.connect();
    c.send(&request("other", "Hi", 2));
    assert_eq!(c.finish("other").1["done"], true);
    let rss = d.rss_kb();
    assert!(rss < idle + 10_000, "RSS {idle} kB idle, {rss} kB now");
}
