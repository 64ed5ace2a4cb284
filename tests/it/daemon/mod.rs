//! A running `bitnetd serve` (the built binary, the tiny reference model, a real Unix socket in
//! a temporary directory) and a line-oriented client, shared by the serve_* tests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub mod mqtt;

/// Every wait in these tests gives up after this long (the tests never measure speed).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A running `bitnetd serve`, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The notification that said READY=1, with the daemon's status line.
    pub ready: String,
    /// systemd's end of NOTIFY_SOCKET.
    notify: UnixDatagram,
}

impl Daemon {
    /// Starts the daemon with `extra` in its config (top-level keys first, then any tables
    /// but `[socket]`) and waits for READY=1.
    pub fn start(extra: &str) -> Daemon {
        Self::launch(extra, &[], &[])
    }

    /// As `start`, with `args` after `serve --config FILE` and extra environment variables.
    pub fn launch(extra: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let model = crate::common::reference("tiny-i2_s.gguf");
        let top = format!(
            "model = {:?}\nctx_size = 1024\n{extra}",
            model.display().to_string()
        );
        let mut d = Self::spawn(&top, args, env);
        d.ready = d.wait_ready();
        assert!(
            d.ready.contains("STATUS=serving tiny-i2_s.gguf"),
            "{}",
            d.ready
        );
        d
    }

    /// Starts `bitnetd serve` with `top` as its config's top-level keys and tables (the
    /// `[socket]` table is added), without waiting for anything.
    pub fn spawn(top: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bitnetd.sock");
        let config = dir.path().join("bitnetd.toml");
        std::fs::write(
            &config,
            format!(
                "{top}\n[socket]\npath = {:?}\n",
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
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Daemon {
            child,
            dir,
            socket,
            ready: String::new(),
            notify,
        }
    }

    /// Reads notifications up to the one that says READY=1 (a STATUS=loading one comes
    /// first); panics if the daemon exits or stays silent for [`PATIENCE`].
    pub fn wait_ready(&mut self) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        self.notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        loop {
            assert!(start.elapsed() < PATIENCE, "no READY=1:\n{}", self.log());
            let Ok(n) = self.notify.recv(&mut buf) else {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("the daemon exited ({status}) before READY:\n{}", self.log());
                }
                continue;
            };
            let n = String::from_utf8_lossy(&buf[..n]).into_owned();
            if n.contains("READY=1") {
                self.notify.set_read_timeout(Some(PATIENCE)).unwrap();
                // The transport is open before READY.
                assert!(self.socket.exists());
                return n;
            }
        }
    }

    pub fn notification(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .notify
            .recv(&mut buf)
            .expect("a notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    pub fn connect(&self) -> Client {
        Client::new(&self.socket)
    }

    /// The daemon's resident set size in kB (VmRSS of /proc/PID/status).
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `{"cmd": "status"}` on a new connection.
    pub fn status(&self) -> Value {
        let mut c = self.connect();
        c.send(&json!({"cmd": "status"}));
        c.event()["status"].clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap()
    }

    /// Waits for `needle` in the log; panics with the log after [`PATIENCE`].
    pub fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < PATIENCE,
                "no {needle:?} in\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends the signal (`TERM`, `HUP`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// Waits for the daemon to exit; None if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
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

/// Sends the signal `name` (`TERM`, `HUP`, ...) to `pid` with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `done` until it holds; panics with `what` after [`PATIENCE`].
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `bitnetd serve` with `config` (written to `dir`/c.toml), which must refuse to start;
/// returns what it printed on stderr.
pub fn refused_config(dir: &Path, config: &str) -> String {
    let path = dir.join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

/// One socket connection.
pub struct Client {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Client {
    pub fn new(path: &Path) -> Client {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, v: &Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }

    pub fn event(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("an event in time");
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    /// Reads `id`'s events up to its final one; returns the streamed text and the final event.
    pub fn finish(&mut self, id: &str) -> (String, Value) {
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

/// Short prompts to repeat in many requests (a few over and over: a growing tokenizer cache
/// is not a leak).
pub const SHORT_PROMPTS: [&str; 5] = [
    "Hi",
    "Hello there",
    "What time is it?",
    "Tell me a joke",
    "Why?",
];

pub fn request(id: &str, prompt: &str, max_tokens: usize) -> Value {
    json!({"id": id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0})
}

/// Greedy requests long enough to still be running when the test acts on them.
pub fn long_request(id: &str) -> Value {
    request(id, "Tell me a long story about the sea", 500)
}

/// A daemon on the 125M dummy model with room for a ~1,500-token prompt: work that takes
/// seconds on any machine (the tiny model answers 500 tokens in half a second).
pub fn dummy_daemon(extra: &str) -> Daemon {
    let top = format!(
        "model = {:?}\nctx_size = 2048\n{extra}",
        dummy_125m().display().to_string()
    );
    let mut d = Daemon::spawn(&top, &[], &[]);
    d.ready = d.wait_ready();
    d
}

/// A 125M-shaped random model (`gen-dummy --model-size 125M`, 32 MB), made once and kept
/// under target/tmp for later runs.
pub fn dummy_125m() -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gen-dummy-125M.gguf");
    if !path.exists() {
        // Written aside under a name of its own and renamed: test binaries, and tests of one
        // binary, running at once never see half a file nor take each other's part file.
        static PARTS: AtomicUsize = AtomicUsize::new(0);
        let n = PARTS.fetch_add(1, Ordering::Relaxed);
        let part = path.with_extension(format!("{}-{n}.part", std::process::id()));
        crate::common::succeeds(
            Command::new(env!("CARGO_BIN_EXE_bitnetd"))
                .args(["gen-dummy", "--model-size", "125M", "--outfile"])
                .arg(&part),
        );
        std::fs::rename(&part, &path).unwrap();
    }
    path
}

/// A prompt of about `n` tokens for the built-in 4096-token tokenizer of gen-dummy models
/// (about 14 tokens a sentence).
pub fn long_prompt(n: usize) -> String {
    let sentence = "the quick brown fox jumps over the lazy dog ";
    sentence.repeat(n / 14)
}
