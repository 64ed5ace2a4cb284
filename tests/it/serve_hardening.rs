//! The daemon under hostile and clumsy clients: idle and slow connections, one client
//! flooding the queue, per-user caps, disconnects and SIGTERM in the middle of a long prompt,
//! SIGHUP, forged log lines. The built binary on real Unix sockets; the long prompts run on
//! a 125M-shaped gen-dummy model.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::daemon::{self, Client, Daemon, PATIENCE, dummy_daemon, long_prompt, request};
use serde_json::{Value, json};

/// Reads one JSON line from a raw stream.
fn read_event(stream: &UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn idle_and_slowloris_connections_cannot_lock_out_a_new_client() {
    let d = Daemon::start("[limits]\nline_timeout_secs = 4\n");
    let connect = || {
        let s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    };
    let idle: Vec<UnixStream> = (0..200).map(|_| connect()).collect();
    let mut slow: Vec<UnixStream> = (0..20).map(|_| connect()).collect();
    // The slow clients trickle a request, one byte a second each, for the rest of the test.
    let trickle = std::thread::spawn({
        let mut slow: Vec<UnixStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        move || {
            for byte in br#"{"cmd":"status"}"#.iter().take(6) {
                for s in &mut slow {
                    // A connection the daemon closed refuses the byte; that is expected.
                    let _ = s.write_all(&[*byte]);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500));

    let start = Instant::now();
    let mut c = d.connect();
    c.send(&json!({"cmd": "status"}));
    let status = c.event();
    let took = start.elapsed();
    println!(
        "a new client's status under 200 idle + 20 slowloris connections: {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(status["status"]["model_state"], "ready", "{status}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // The oldest idle connections were closed with a line saying why.
    let e = read_event(&idle[0]);
    assert_eq!(e["error"]["code"], "closed", "{e}");
    let why = e["error"]["message"].as_str().unwrap();
    assert!(why.contains("make room for a new connection"), "{why}");
    // A slow line is cut off once its time is up (unless its connection made room first).
    trickle.join().unwrap();
    let last = slow.pop().unwrap();
    let e = read_event(&last);
    assert_eq!(e["error"]["code"], "closed", "{e}");
    let why = e["error"]["message"].as_str().unwrap();
    assert!(
        why.contains("within 4 s of its first byte") || why.contains("make room"),
        "{why}"
    );
    // Whatever was cut off, the daemon is open: never more than 32 of one user's connections.
    let mut c = d.connect();
    c.send(&json!({"cmd": "health"}));
    assert_eq!(c.event()["health"], "ok");
    drop(idle);
}

#[test]
fn one_connection_flooding_the_queue_does_not_delay_another() {
    let d = Daemon::start("");
    // A long request holds the engine while the others queue.
    let mut holder = d.connect();
    holder.send(&daemon::long_request("hold"));
    assert!(holder.event()["token"].is_string());
    let mut flood = d.connect();
    for i in 0..40 {
        flood.send(&request(&format!("f{i}"), "Tell me a story", 8));
    }
    // Lines are handled in order: once `health` is answered, all 40 were queued or refused.
    flood.send(&json!({"cmd": "health"}));
    let mut busy = 0;
    loop {
        let e = flood.event();
        if e["health"].is_string() {
            break;
        }
        assert_eq!(e["error"]["code"], "busy", "{e}");
        let why = e["error"]["message"].as_str().unwrap();
        assert!(why.contains("as many requests queued as it may"), "{why}");
        busy += 1;
    }
    // The per-client cap: 4 wait, the other 36 were refused at once.
    assert_eq!(busy, 36);
    let mut other = d.connect();
    other.send(&request("mine", "Hi", 4));
    other.send(&json!({"cmd": "health"}));
    assert_eq!(other.event()["health"], "ok");
    holder.send(&json!({"cancel": "hold"}));
    assert_eq!(holder.finish("hold").1["finish_reason"], "cancelled");

    let (_, mine) = other.finish("mine");
    assert_eq!(mine["done"], true, "{mine}");
    for i in 0..4 {
        let id = format!("f{i}");
        assert_eq!(flood.finish(&id).1["done"], true);
    }
    // The log lines come in the order the engine finished the requests: the other client's
    // one request came right after the flood's first, not after all four.
    let log = d.log();
    let finished: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("request ").nth(1))
        .filter_map(|l| l.split(" via socket").next())
        .filter(|id| id.starts_with('f') || *id == "mine")
        .filter(|id| !log.contains(&format!("request {id} via socket: 0 prompt tokens")))
        .collect();
    assert_eq!(finished, ["f0", "mine", "f1", "f2", "f3"], "{log}");
}

#[test]
fn one_user_cannot_hold_more_connections_than_its_cap() {
    let d = Daemon::start("[limits]\nmax_connections_per_uid = 2\n");
    // Two connections with work in flight cannot make room for a third.
    let mut a = d.connect();
    a.send(&daemon::long_request("a"));
    assert_eq!(a.event()["id"], "a", "a runs");
    let mut b = d.connect();
    b.send(&daemon::long_request("b"));
    // Lines are handled in order: once `health` is answered, b's request is queued.
    b.send(&json!({"cmd": "health"}));
    assert_eq!(b.event()["health"], "ok");
    let third = UnixStream::connect(&d.socket).unwrap();
    third.set_read_timeout(Some(PATIENCE)).unwrap();
    let e = read_event(&third);
    assert_eq!(e["error"]["code"], "busy", "{e}");
    let why = e["error"]["message"].as_str().unwrap();
    assert!(why.contains("has 2 connections open"), "{why}");
    let mut rest = String::new();
    BufReader::new(&third).read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "the refused connection is closed");
    // Once a connection is idle it makes room for the user's next one.
    a.send(&json!({"cancel": "a"}));
    assert_eq!(a.finish("a").1["finish_reason"], "cancelled");
    let mut c = d.connect();
    c.send(&json!({"cmd": "health"}));
    assert_eq!(c.event()["health"], "ok");
    let e = a.event();
    assert_eq!(e["error"]["code"], "closed", "{e}");
    b.send(&json!({"cancel": "b"}));
}

/// Sends a ~1,500-token prompt and waits until the engine is evaluating it.
fn start_long_prompt(d: &Daemon, c: &mut Client, id: &str) {
    c.send(&request(id, &long_prompt(1480), 4));
    let start = Instant::now();
    while d.status()["busy"] != true {
        assert!(start.elapsed() < PATIENCE);
        std::thread::sleep(Duration::from_millis(5));
    }
    // Well into the prompt, not at its first layer.
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn a_disconnect_during_a_long_prompt_frees_the_engine_within_a_layer() {
    let d = dummy_daemon("");
    let mut c = d.connect();
    start_long_prompt(&d, &mut c, "long");
    let mut next = d.connect();
    drop(c);
    let gone = Instant::now();
    next.send(&request("next", "Hi", 2));
    let first = next.event();
    let took = gone.elapsed();
    assert_eq!(first["id"], "next", "{first}");
    println!(
        "from a disconnect during a ~1,500-token prompt to the next request's first event: \
         {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("request long via socket"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("0 completion tokens"), "{line}");
    assert!(line.contains("finish cancelled"), "{line}");
    // Evaluating the whole prompt takes many seconds here; one layer a fraction of one.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn sigterm_during_a_long_prompt_still_sends_the_final_event() {
    let mut d = dummy_daemon("");
    let mut c = d.connect();
    start_long_prompt(&d, &mut c, "long");
    let mut queued = d.connect();
    queued.send(&request("queued", "Hi", 2));
    d.sigterm();
    let (_, done) = c.finish("long");
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    assert_eq!(done["usage"]["completion_tokens"], 0, "{done}");
    let (_, done) = queued.finish("queued");
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    let status = d.wait_exit(Duration::from_secs(10)).expect("an exit");
    assert!(status.success(), "{status}");
}

#[test]
fn sighup_is_logged_and_ignored() {
    let d = Daemon::start("");
    d.signal("HUP");
    d.wait_log("SIGHUP: ignored");
    d.signal("HUP");
    let mut c = d.connect();
    c.send(&request("after", "Hi", 2));
    assert_eq!(c.finish("after").1["done"], true);
    assert!(d.socket.exists());
}

#[test]
fn a_request_id_cannot_forge_log_lines() {
    let d = Daemon::start("");
    let mut c = d.connect();
    let id = "x\nINFO request forged via socket: finish stop\u{1b}[2J";
    c.send(&request(id, "Hi", 2));
    let (_, done) = c.finish(id);
    // Echoed to the client as sent.
    assert_eq!(done["id"], id);
    d.wait_log(r"request x\nINFO request forged via socket: finish stop\u{1b}[2J via socket");
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.starts_with("INFO request forged")),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "{log}");
}
