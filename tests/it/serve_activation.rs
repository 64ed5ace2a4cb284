//! Socket activation (bitnetd.socket): the daemon serves on the listening socket it inherits
//! (LISTEN_FDS; here from `systemd-socket-activate`, the tool systemd ships to do what a
//! socket unit does) and leaves that socket's file alone: no chmod, no removal at exit, and
//! no socket of its own at `socket.path`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon::{Client, PATIENCE, request};
use serde_json::json;

fn socket_activate_tool() -> Option<PathBuf> {
    [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn serves_on_an_inherited_socket_and_leaves_its_file() {
    let Some(tool) = socket_activate_tool() else {
        common::skip("systemd-socket-activate is not installed (Debian package systemd)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let inherited = dir.path().join("activated.sock");
    let own = dir.path().join("own.sock");
    let config = dir.path().join("bitnetd.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nctx_size = 1024\n[socket]\npath = {:?}\nmode = \"0600\"\n",
            common::reference("tiny-i2_s.gguf").display().to_string(),
            own.display().to_string()
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let log_path = dir.path().join("log");
    // The tool passes on only the variables named with --setenv.
    let mut child = Command::new(tool)
        .arg("--listen")
        .arg(&inherited)
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--setenv=RUST_LOG=info")
        .arg(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap();

    // The tool binds before it starts the daemon: the file's mode is the tool's.
    let start = Instant::now();
    while !inherited.exists() {
        assert!(start.elapsed() < PATIENCE, "no socket file: {}", log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let mode_before = mode(&inherited);
    assert_ne!(
        mode_before, 0o600,
        "choose a configured mode the tool does not give"
    );
    // Like a socket unit, the tool starts the daemon at the first connection, which waits
    // in the backlog until the daemon accepts it.
    let mut client = Client::new(&inherited);

    // STATUS=loading comes first (the socket answers while the model loads), then READY=1.
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
    assert!(log().contains("passed by systemd"), "{}", log());
    assert!(!own.exists(), "the daemon bound socket.path too");
    assert_eq!(mode(&inherited), mode_before, "the daemon changed the mode");

    client.send(&json!({"cmd": "status"}));
    assert_eq!(
        client.event()["status"]["model"],
        "tiny-i2_s.gguf",
        "{}",
        log()
    );
    client.send(&request("a", "Hello there", 4));
    let (text, last) = client.finish("a");
    assert_eq!(last["done"], true, "{last}");
    assert!(!text.is_empty(), "{last}");
    drop(client);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < PATIENCE, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}\n{}", log());
    assert!(
        inherited.exists(),
        "the daemon removed systemd's socket file"
    );
}
