//! The daemon's states before it serves: the socket answers `loading` while the model loads,
//! `no_model` when there is none to load (the package's first start), and a model file cut
//! short stops the daemon with a message instead of a crash.

use std::time::{Duration, Instant};

use crate::common;
use crate::daemon::{Daemon, PATIENCE, dummy_125m, long_prompt, request};
use serde_json::json;

#[test]
fn without_a_model_the_daemon_stays_up_and_says_what_to_do() {
    let models = tempfile::tempdir().unwrap();
    let top = format!("model_dir = {:?}\n", models.path().display().to_string());
    let mut d = Daemon::spawn(&top, &[], &[]);
    let ready = d.wait_ready();
    let what = format!(
        "no model configured: put a GGUF in {} or set model=",
        models.path().display()
    );
    assert!(
        ready.contains(&format!("STATUS=no model: {what}")),
        "{ready}"
    );
    let mut c = d.connect();
    c.send(&request("q", "Hi", 2));
    let e = c.event();
    assert_eq!(e["id"], "q", "{e}");
    assert_eq!(e["error"]["code"], "no_model", "{e}");
    assert_eq!(e["error"]["message"], what.as_str(), "{e}");
    c.send(&json!({"cmd": "status"}));
    let s = c.event()["status"].clone();
    assert_eq!(s["model_state"], "no_model", "{s}");
    assert_eq!(s["message"], what.as_str(), "{s}");
    c.send(&json!({"cmd": "health"}));
    assert_eq!(c.event()["health"], "no_model");
    assert!(d.log().contains(&what), "{}", d.log());
    d.sigterm();
    assert!(d.wait_exit(PATIENCE).expect("an exit").success());

    // The one GGUF put there is served at the next start.
    let model = models.path().join("tiny-i2_s.gguf");
    std::fs::copy(common::reference("tiny-i2_s.gguf"), &model).unwrap();
    let mut d = Daemon::spawn(&top, &[], &[]);
    let ready = d.wait_ready();
    assert!(ready.contains("STATUS=serving tiny-i2_s.gguf"), "{ready}");
    // Two: the daemon does not choose, and names them.
    drop(d);
    std::fs::copy(&model, models.path().join("other.gguf")).unwrap();
    let mut d = Daemon::spawn(&top, &[], &[]);
    let ready = d.wait_ready();
    assert!(
        ready.contains("2 GGUF files (other.gguf, tiny-i2_s.gguf): set model="),
        "{ready}"
    );
}

#[test]
fn while_the_model_loads_requests_are_answered_loading() {
    // A long system prompt makes the warm-up (part of loading) take seconds on 125M.
    let top = format!(
        "model = {:?}\nctx_size = 2048\nsystem_prompt = {:?}\n",
        dummy_125m().display().to_string(),
        long_prompt(700)
    );
    let mut d = Daemon::spawn(&top, &[], &[]);
    let start = Instant::now();
    while !d.socket.exists() {
        assert!(start.elapsed() < PATIENCE, "{}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut c = d.connect();
    c.send(&request("early", "Hi", 2));
    let e = c.event();
    assert_eq!(e["error"]["code"], "loading", "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gen-dummy-125M.gguf is loading"),
        "{message}"
    );
    c.send(&json!({"cmd": "status"}));
    let s = c.event()["status"].clone();
    assert_eq!(s["model_state"], "loading", "{s}");
    assert_eq!(s["model"], "gen-dummy-125M.gguf", "{s}");
    c.send(&json!({"cmd": "health"}));
    assert_eq!(c.event()["health"], "loading");
    assert!(
        d.log()
            .contains("loading gen-dummy-125M.gguf; answering on"),
        "{}",
        d.log()
    );

    d.ready = d.wait_ready();
    c.send(&request("later", "Hi", 2));
    assert_eq!(c.finish("later").1["done"], true);
    c.send(&json!({"cmd": "health"}));
    assert_eq!(c.event()["health"], "ok");
}

#[test]
fn a_model_file_cut_short_stops_the_daemon_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let whole = std::fs::read(common::reference("tiny-i2_s.gguf")).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
    let top = format!("model = {:?}\n", cut.display().to_string());
    let mut d = Daemon::spawn(&top, &[], &[]);
    let status = d.wait_exit(PATIENCE).expect("the daemon gives up");
    assert!(!status.success());
    let log = d.log();
    assert!(log.contains("loading the model"), "{log}");
    assert!(log.contains("cut.gguf"), "{log}");
    // It says the file is short and where, not a crash.
    assert!(log.contains("byte") || log.contains("offset"), "{log}");
    assert!(!d.socket.exists(), "the socket file is removed");
}
