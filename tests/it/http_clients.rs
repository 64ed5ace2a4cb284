//! The official `openai` and `ollama` Python packages (installed by .ci/run into a venv)
//! against the built daemon's `[http]` listener, streaming and not, with an API key.

use std::process::Command;

use crate::common;
use crate::daemon::{Daemon, free_port};
use crate::http::{http_config, python_venv};

#[test]
fn the_official_python_clients_work_unchanged() {
    let Some(python) = python_venv() else {
        common::skip("no venv with the openai and ollama packages (.ci/run makes it)");
        return;
    };
    let port = free_port();
    let key_dir = tempfile::tempdir().unwrap();
    let key = key_dir.path().join("key");
    std::fs::write(&key, "py-test-key\n").unwrap();
    let d = Daemon::start(&http_config(
        port,
        &format!("api_key_file = {:?}", key.display().to_string()),
    ));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/http/clients.py");
    let out = Command::new(python)
        .args([script, &port.to_string(), "py-test-key"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}
