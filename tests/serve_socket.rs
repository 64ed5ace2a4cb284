//! The daemon end to end: the built binary serving the tiny reference model on a real Unix
//! socket in a temporary directory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Every wait in these tests gives up after this long (the tests never measure speed).
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `bitnetd serve`, killed on drop.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// systemd's end of NOTIFY_SOCKET.
    notify: UnixDatagram,
}

impl Daemon {
    /// Starts the daemon with `extra` appended to its config and waits for READY=1.
    fn start(extra: &str) -> Daemon {
        Self::start_with(extra, &[])
    }

    /// As `start`, with extra environment variables.
    fn start_with(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bitnetd.sock");
        let config = dir.path().join("bitnetd.toml");
        let model = common::reference("tiny-i2_s.gguf");
        std::fs::write(
            &config,
            format!(
                "model = {:?}\nctx_size = 1024\n[socket]\npath = {:?}\n{extra}",
                model.display().to_string(),
                socket.display().to_string()
            ),
        )
        .unwrap();
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(PATIENCE)).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir,
            socket,
            notify,
        };
        let ready = d.notification();
        assert!(ready.contains("READY=1"), "{ready}");
        assert!(ready.contains("STATUS=serving tiny-i2_s.gguf"), "{ready}");
        // The transport is open before READY.
        assert!(d.socket.exists());
        d
    }

    fn notification(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .notify
            .recv(&mut buf)
            .expect("a notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn connect(&self) -> Client {
        Client::new(&self.socket)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap()
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the daemon to exit; None if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One socket connection.
struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn new(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn send(&mut self, v: &Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }

    fn event(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("an event in time");
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Reads `id`'s events up to its final one; returns the streamed text and the final event.
    fn finish(&mut self, id: &str) -> (String, Value) {
        let mut text = String::new();
        loop {
            let e = self.event();
            assert_eq!(e["id"], id, "{e}");
            if let Some(t) = e["token"].as_str() {
                text.push_str(t);
            } else {
                return (text, e);
            }
        }
    }
}

fn request(id: &str, prompt: &str, max_tokens: usize) -> Value {
    json!({"id": id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0})
}

/// Greedy requests long enough to still be running when the test acts on them.
fn long_request(id: &str) -> Value {
    request(id, "Tell me a long story about the sea", 500)
}

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
    assert!(d.log().contains("request r2 via socket"), "{}", d.log());

    c.send(&json!({"cmd": "status"}));
    let s = c.event();
    assert_eq!(s["status"]["model"], "tiny-i2_s.gguf", "{s}");
    assert_eq!(s["status"]["requests"], 2, "{s}");
    assert_eq!(s["status"]["queue_depth"], 0, "{s}");
    c.send(&json!({"cmd": "health", "id": "h"}));
    let h = c.event();
    assert_eq!(h, json!({"id": "h", "health": "ok"}));
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
fn malformed_input_gets_errors_while_a_valid_request_completes() {
    let d = Daemon::start("[limits]\nmax_line_bytes = 1024\nmax_prompt_tokens = 64\n");
    let mut valid = d.connect();
    valid.send(&request("ok", "A fine request", 20));

    let mut bad = d.connect();
    let cases: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"{not json\n".to_vec(), "bad_request", None),
        (b"[1, 2, 3]\n".to_vec(), "bad_request", None),
        (b"\"just a string\"\n".to_vec(), "bad_request", None),
        (
            b"{\"id\":\"u\",\"prompt\":\"x\",\"colour\":\"red\"}\n".to_vec(),
            "bad_request",
            Some("u"),
        ),
        (
            b"{\"id\":\"t\",\"prompt\":42}\n".to_vec(),
            "bad_request",
            Some("t"),
        ),
        (
            b"{\"id\":\"m\",\"prompt\":\"x\",\"max_tokens\":-1}\n".to_vec(),
            "bad_request",
            Some("m"),
        ),
        (
            b"{\"id\":\"p\",\"prompt\":\"x\",\"top_p\":7}\n".to_vec(),
            "bad_request",
            Some("p"),
        ),
        (b"{\"id\":\"n\"}\n".to_vec(), "bad_request", Some("n")),
        (
            b"{\"id\":\"b\",\"prompt\":\"x\",\"messages\":[]}\n".to_vec(),
            "bad_request",
            Some("b"),
        ),
        (
            b"{\"id\":\"r\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}\n".to_vec(),
            "bad_request",
            Some("r"),
        ),
        (b"{\"id\":\"\xff\xfe\"}\n".to_vec(), "bad_request", None),
        (b"{\"cmd\":\"reboot\"}\n".to_vec(), "bad_request", None),
        (
            format!("{{\"id\":\"l\",\"prompt\":\"{}\"}}\n", "a".repeat(5000)).into_bytes(),
            "too_long",
            None,
        ),
        (
            format!(
                "{{\"id\":\"big\",\"prompt\":\"{}\"}}\n",
                "word ".repeat(150)
            )
            .into_bytes(),
            "too_long",
            Some("big"),
        ),
    ];
    for (line, code, id) in &cases {
        bad.send_raw(b"\n"); // blank lines are ignored
        bad.send_raw(line);
        let e = bad.event();
        assert_eq!(e["error"]["code"], *code, "{e} for {line:?}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
        if let Some(id) = id {
            assert_eq!(e["id"], *id, "{e}");
        }
    }
    // The same connection still serves a valid request, and so did the other one.
    bad.send(&request("after", "Hi", 2));
    assert_eq!(bad.finish("after").1["done"], true);
    let (_, done) = valid.finish("ok");
    assert_eq!(done["done"], true, "{done}");
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
    let serve = |config: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let err = serve("[limits]\nqueue_deep = 2\n");
    assert!(err.contains("queue_deep"), "{err}");
    let err = serve("threads = -3\n");
    assert!(err.contains("threads"), "{err}");
    let err = serve("[sampling]\ntemperature = -1.0\n");
    assert!(err.contains("sampling.temperature"), "{err}");
    let missing = dir.path().join("missing.gguf");
    let err = serve(&format!("model = {:?}\n", missing.display().to_string()));
    assert!(err.contains("missing.gguf"), "{err}");
}

#[test]
fn a_request_past_its_timeout_is_cancelled() {
    let d = Daemon::start("[limits]\nrequest_timeout_secs = 1\n");
    let mut c = d.connect();
    c.send(&long_request("slow"));
    let (_, done) = c.finish("slow");
    // 500 tokens take longer than a second on any machine these tests run on; a stop
    // token before that would end it as "stop".
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
    let d = Daemon::start_with("", &[("WATCHDOG_USEC", "2000000")]);
    let got = d.notification();
    assert!(got.contains("WATCHDOG=1"), "{got}");
    let mut c = d.connect();
    c.send(&request("w", "Hi", 4));
    assert_eq!(c.finish("w").1["done"], true);
    let got = d.notification();
    assert!(got.contains("WATCHDOG=1"), "{got}");
}
