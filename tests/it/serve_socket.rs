//! The daemon end to end: the built binary serving the tiny reference model on a real Unix
//! socket in a temporary directory.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::{
    Client, Daemon, PATIENCE, dummy_daemon, long_prompt, long_request, refused_config, request,
};
use serde_json::{Value, json};

#[test]
fn a_request_streams_tokens_then_a_final_event() {
    let d = Daemon::start("");
    let mut c = d.connect();
    c.send(&request("r1", "Hello there", 8));
    let (streamed, done) = c.finish("r1");
    assert_eq!(done["done"], true, "{done}");
    assert_eq!(done["text"], streamed.as_str());
    let finish = done["finish_reason"].as_str().unwrap();
    let completion = done["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(
        finish == "length" && completion == 8 || finish == "stop",
        "{done}"
    );
    assert!(
        done["usage"]["prompt_tokens"].as_u64().unwrap() > 2,
        "{done}"
    );
    for key in ["queue_ms", "ttft_ms", "tokens_per_s"] {
        assert!(done["timings"][key].as_f64().unwrap() >= 0.0, "{done}");
    }

    // The same request again (its prompt now in the prefix cache) gives the same text,
    // and without streaming only the final event comes.
    let mut again = request("r2", "Hello there", 8);
    again["stream"] = json!(false);
    c.send(&again);
    let e = c.event();
    assert_eq!(e["done"], true, "{e}");
    assert_eq!(e["text"], done["text"]);
    // One log line per request, with its counts, timings and finish.
    let log = d.log();
    let line = log.lines().find(|l| l.contains("request r2 via socket: "));
    let line = line.unwrap_or_else(|| panic!("{log}"));
    for part in [
        "prompt tokens",
        "completion tokens",
        "ttft",
        "tokens/s",
        "finish ",
    ] {
        assert!(line.contains(part), "{line}");
    }

    c.send(&json!({"cmd": "status"}));
    let s = c.event();
    assert_eq!(s["status"]["model"], "tiny-i2_s.gguf", "{s}");
    assert_eq!(s["status"]["head"], "f16", "{s}");
    assert_eq!(s["status"]["requests"], 2, "{s}");
    assert_eq!(s["status"]["queue_depth"], 0, "{s}");
    c.send(&json!({"cmd": "health", "id": "h"}));
    let h = c.event();
    assert_eq!(h, json!({"id": "h", "health": "ok"}));
}

#[test]
fn status_says_idle_as_soon_as_the_last_answer_is_in() {
    // The engine marks itself idle before it sends a final event, and that event reaches
    // this client before the status request leaves it: no answer can see "busy" here.
    let d = Daemon::start("");
    let mut c = d.connect();
    for i in 0..20 {
        let id = format!("s{i}");
        c.send(&request(&id, "Hi", 1 + i % 3));
        assert_eq!(c.finish(&id).1["done"], true);
        c.send(&json!({"cmd": "status"}));
        let s = c.event();
        assert_eq!(s["status"]["busy"], false, "{s}");
        assert_eq!(s["status"]["requests"], i + 1, "{s}");
    }
}

#[test]
fn many_clients_are_served_in_turn_and_a_full_queue_answers_busy() {
    let d = Daemon::start("[limits]\nqueue_depth = 2\n");
    // One request running, two waiting: the queue is full.
    let mut running = d.connect();
    running.send(&long_request("long"));
    assert!(running.event()["token"].is_string());
    let mut waiting: Vec<Client> = (0..2)
        .map(|i| {
            let mut c = d.connect();
            c.send(&request(&format!("w{i}"), "Hi", 4));
            c
        })
        .collect();
    // Both are queued once status counts them (submission is asynchronous to this thread).
    let mut probe = d.connect();
    let start = Instant::now();
    loop {
        probe.send(&json!({"cmd": "status"}));
        if probe.event()["status"]["queue_depth"] == 2 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the requests were never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut extra = d.connect();
    extra.send(&request("x", "Hi", 4));
    let e = extra.event();
    assert_eq!(e["id"], "x");
    assert_eq!(e["error"]["code"], "busy", "{e}");

    running.send(&json!({"cancel": "long"}));
    let (_, done) = running.finish("long");
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    for (i, c) in waiting.iter_mut().enumerate() {
        let (_, done) = c.finish(&format!("w{i}"));
        assert_eq!(done["done"], true, "{done}");
    }

    // Now many at once: each gets its answer or, beyond the queue's room, `busy`.
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::new(&socket);
                let id = format!("c{i}");
                c.send(&request(&id, "Count with me", 3));
                c.finish(&id).1
            })
        })
        .collect();
    let mut served = 0;
    for t in clients {
        let e = t.join().unwrap();
        if e["done"] == true {
            served += 1;
        } else {
            assert_eq!(e["error"]["code"], "busy", "{e}");
        }
    }
    // Two always fit in the queue, whatever the order of arrival.
    assert!(served >= 2, "{served} served");
}

#[test]
fn cancel_stops_a_request_and_unknown_ids_are_refused() {
    let d = Daemon::start("");
    let mut c = d.connect();
    c.send(&long_request("r1"));
    assert!(c.event()["token"].is_string());
    c.send(&json!({"cancel": "r1"}));
    let (_, done) = c.finish("r1");
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() < 500);
    c.send(&json!({"cancel": "nope"}));
    let e = c.event();
    assert_eq!(e["error"]["code"], "bad_request", "{e}");
    // The connection goes on.
    c.send(&request("r2", "Hi", 2));
    assert_eq!(c.finish("r2").1["done"], true);
}

#[test]
fn a_client_gone_mid_stream_cancels_its_request() {
    let d = Daemon::start("");
    {
        let mut c = d.connect();
        c.send(&long_request("gone"));
        assert!(c.event()["token"].is_string());
        assert!(c.event()["token"].is_string());
    }
    let start = Instant::now();
    while !d.log().contains("request gone via socket") {
        assert!(start.elapsed() < PATIENCE, "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = d.log();
    let line = log.lines().find(|l| l.contains("request gone")).unwrap();
    assert!(line.contains("finish cancelled"), "{line}");
    // The engine is free for the next client.
    let mut c = d.connect();
    c.send(&request("next", "Hi", 2));
    assert_eq!(c.finish("next").1["done"], true);
}

#[test]
fn sigterm_cancels_in_flight_work_and_exits_cleanly() {
    let mut d = Daemon::start("");
    let mut running = d.connect();
    running.send(&long_request("a"));
    assert!(running.event()["token"].is_string());
    let mut queued = d.connect();
    queued.send(&long_request("b"));
    let mut probe = d.connect();
    let start = Instant::now();
    loop {
        probe.send(&json!({"cmd": "status"}));
        if probe.event()["status"]["queue_depth"] == 1 {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "the request was never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    d.sigterm();
    let (_, done) = running.finish("a");
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    let (_, done) = queued.finish("b");
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    let status = d
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s");
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists(), "the socket file is removed");
    // The connection is closed after the last event.
    let mut rest = String::new();
    assert_eq!(running.reader.read_to_string(&mut rest).unwrap(), 0);
    assert!(d.log().contains("SIGTERM"));
}

#[test]
fn ask_streams_the_answer() {
    let d = Daemon::start("");
    let ask = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["ask", "--socket"])
            .arg(&d.socket)
            .args(["-n", "4", "--temp", "0", "--system", "Be brief."])
            .args(extra)
            .arg("Why is the sky blue?")
            .output()
            .unwrap()
    };
    let out = ask(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.trim().is_empty());
    let out = ask(&["--json"]);
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let done = events.last().unwrap();
    assert_eq!(done["done"], true, "{done}");
    // Greedy: the same answer both ways.
    assert_eq!(format!("{}\n", done["text"].as_str().unwrap()), text);
}

#[test]
fn bad_config_or_model_stops_the_daemon_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |config: &str| refused_config(dir.path(), config);
    let err = serve("[limits]\nqueue_deep = 2\n");
    assert!(err.contains("queue_deep"), "{err}");
    let err = serve("threads = -3\n");
    assert!(err.contains("threads"), "{err}");
    let err = serve("head = \"q4\"\n");
    assert!(
        err.contains("head = \"q4\"") && err.contains("expected file or q8"),
        "{err}"
    );
    let err = serve("cores = []\n");
    assert!(err.contains("`cores`"), "{err}");
    let err = serve("[sampling]\ntemperature = -1.0\n");
    assert!(err.contains("sampling.temperature"), "{err}");
    let missing = dir.path().join("missing.gguf");
    let err = serve(&format!("model = {:?}\n", missing.display().to_string()));
    assert!(err.contains("missing.gguf"), "{err}");
}

#[test]
fn the_output_head_can_be_the_8_bit_copy() {
    // From the config key, and from the flag over a config that says "file".
    for d in [
        Daemon::start("head = \"q8\"\n"),
        Daemon::launch("head = \"file\"\n", &["--head", "q8"], &[]),
    ] {
        assert!(d.ready.contains("kernel, q8_0 head"), "{}", d.ready);
        assert_eq!(d.status()["head"], "q8_0");
        let mut c = d.connect();
        c.send(&request("q", "Hello there", 8));
        let (streamed, done) = c.finish("q");
        assert_eq!(done["done"], true, "{done}");
        assert_eq!(done["text"], streamed.as_str());
        assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
}

#[test]
fn a_request_past_its_timeout_is_cancelled() {
    // The tiny model generates 500 tokens in half a second on a quiet machine: a 1,480-token
    // prompt and 500 tokens on the 125M model take seconds. A stop token before the timeout
    // would end it as "stop".
    let d = dummy_daemon("[limits]\nrequest_timeout_secs = 1\n");
    let mut c = d.connect();
    c.send(&request("slow", &long_prompt(1480), 500));
    let (_, done) = c.finish("slow");
    assert!(
        done["finish_reason"] == "cancelled" || done["finish_reason"] == "stop",
        "{done}"
    );
    assert!(
        done["usage"]["completion_tokens"].as_u64().unwrap() < 500,
        "{done}"
    );
}

#[test]
fn the_watchdog_is_pinged_while_the_engine_lives() {
    // A 2 s period: a check every 500 ms, a ping when the engine beat (a token, or a 500 ms
    // idle wait on the queue) within the last second. Idle or busy, pings keep coming.
    let d = Daemon::launch("", &[], &[("WATCHDOG_USEC", "2000000")]);
    let got = d.notification();
    assert!(got.contains("WATCHDOG=1"), "{got}");
    let mut c = d.connect();
    c.send(&request("w", "Hi", 4));
    assert_eq!(c.finish("w").1["done"], true);
    let got = d.notification();
    assert!(got.contains("WATCHDOG=1"), "{got}");
}

#[test]
fn the_prefix_cache_can_be_turned_off_and_changes_no_output() {
    let system = "You are a helpful assistant who answers in a few words. ".repeat(8);
    let serve = |prefix_cache: bool| {
        let d = Daemon::start(&format!(
            "system_prompt = {system:?}\nprefix_cache = {prefix_cache}\n"
        ));
        let mut c = d.connect();
        let texts: Vec<Value> = ["Hi", "What is the sea?"]
            .iter()
            .enumerate()
            .map(|(i, prompt)| {
                let id = format!("p{i}");
                c.send(&request(&id, prompt, 6));
                c.finish(&id).1["text"].clone()
            })
            .collect();
        (texts, d.log())
    };
    // "request ID via socket: N prompt tokens (R reused), ..." gives R.
    let reused = |log: &str, id: &str| -> usize {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("request {id} via socket")))
            .unwrap_or_else(|| panic!("no log line for {id}: {log}"));
        let (_, rest) = line.split_once(" prompt tokens (").unwrap();
        rest.split_once(" reused)").unwrap().0.parse().unwrap()
    };
    let (with, log_with) = serve(true);
    let (without, log_without) = serve(false);
    assert_eq!(with, without);
    // The system prompt was evaluated at boot, so even the first request reuses it.
    for id in ["p0", "p1"] {
        assert!(reused(&log_with, id) > 50, "{log_with}");
        assert_eq!(reused(&log_without, id), 0, "{log_without}");
    }
}
