//! The socket file on disk, with the built binary: its mode is the configured one whatever
//! the daemon's umask, its group is set without following a symlink, a stale socket is
//! replaced, and nothing else found at the path (a live daemon's socket, a symlink, a file,
//! a directory) is touched: the daemon refuses to start and says why, naming the path.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::daemon::{Client, Daemon, PATIENCE};
use serde_json::json;

/// A config serving the tiny model on `socket`, with `socket_extra` in its `[socket]` table.
fn config(dir: &Path, socket: &Path, socket_extra: &str) -> PathBuf {
    let path = dir.join("bitnetd.toml");
    let text = format!(
        "model = {:?}\nctx_size = 256\n[socket]\npath = {:?}\n{socket_extra}\n",
        common::reference("tiny-i2_s.gguf").display().to_string(),
        socket.display().to_string(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `bitnetd serve --config CONFIG` started by a shell that first sets `umask`; killed on drop.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, config: &Path, umask: &str) -> Serve {
        let log = dir.join("log");
        let child = Command::new("sh")
            .args(["-c", "umask \"$1\" && shift && exec \"$@\"", "sh", umask])
            .arg(env!("CARGO_BIN_EXE_bitnetd"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Serve { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Waits until `socket` answers `status` (the socket is bound before the model loads).
    fn wait_answering(&mut self, socket: &Path) {
        let start = Instant::now();
        loop {
            if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
                let mut c = Client::new(socket);
                c.send(&json!({"cmd": "status"}));
                assert!(c.event()["status"].is_object());
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the daemon exited ({status}):\n{}", self.log());
            }
            assert!(start.elapsed() < PATIENCE, "no socket:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bitnetd serve --config CONFIG`, which must refuse to start within [`PATIENCE`];
/// returns what it printed on stderr.
fn refused(config: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bitnetd"))
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            let Output { stderr, .. } = child.wait_with_output().unwrap();
            panic!(
                "the daemon did not refuse to start:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn the_socket_gets_the_configured_mode_whatever_the_umask() {
    // (the daemon's umask, socket.mode or None for the default)
    let cases = [
        ("000", None),
        ("077", None),
        ("000", Some("0600")),
        ("077", Some("0666")),
        ("027", Some("0620")),
    ];
    for (umask, configured) in cases {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("s.sock");
        let extra = configured.map_or(String::new(), |m| format!("mode = {m:?}"));
        let cfg = config(dir.path(), &socket, &extra);
        let mut d = Serve::start(dir.path(), &cfg, umask);
        d.wait_answering(&socket);
        // The default is 0660 (config.rs, README): owner and group, nobody else.
        let want = u32::from_str_radix(configured.unwrap_or("0660"), 8).unwrap();
        assert_eq!(
            mode(&socket),
            want,
            "umask {umask}, socket.mode {configured:?}: got {:o}",
            mode(&socket)
        );
        assert!(is_socket(&socket));
        // The daemon's umask is its own again after the bind: files it makes later follow it.
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        assert!(line.ends_with(&format!("0{umask}")), "{line}");
    }
}

/// A group other than the test's own primary group that the socket can be given: any group
/// for root, else one of the test user's supplementary groups. None when there is none.
fn another_group() -> Option<(String, u32)> {
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let primary: u32 = id("-g").trim().parse().unwrap();
    let uid: u32 = id("-u").trim().parse().unwrap();
    let mine: Vec<u32> = id("-G")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let gid: u32 = f.nth(1)?.parse().ok()?;
        let usable = gid != primary && (uid == 0 || mine.contains(&gid));
        usable.then(|| (name.to_string(), gid))
    })
}

#[test]
fn the_socket_gets_the_configured_group_and_nothing_else_changes_owner() {
    let Some((group, gid)) = another_group() else {
        common::skip("the test user is in no group but its primary one");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let cfg = config(dir.path(), &socket, &format!("group = {group:?}"));
    let dir_before = std::fs::metadata(dir.path()).unwrap();
    let mut d = Serve::start(dir.path(), &cfg, "022");
    d.wait_answering(&socket);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.gid(), gid, "socket.group = {group}");
    assert_eq!(
        meta.uid(),
        dir_before.uid(),
        "the owner stays the daemon's user"
    );
    assert_eq!(mode(&socket), 0o660);
    let dir_after = std::fs::metadata(dir.path()).unwrap();
    assert_eq!(
        (dir_after.uid(), dir_after.gid()),
        (dir_before.uid(), dir_before.gid()),
        "the directory keeps its owner"
    );
}

#[test]
fn an_unknown_group_is_refused_without_leaving_a_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let cfg = config(dir.path(), &socket, "group = \"no-such-group-h13\"");
    let err = refused(&cfg);
    assert!(
        err.contains("socket.group") && err.contains("no-such-group-h13"),
        "{err}"
    );
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "a socket file was left behind"
    );
}

#[test]
fn a_symlink_at_the_socket_path_is_refused_and_its_target_untouched() {
    let group = another_group();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    std::fs::set_permissions(&target, PermissionsExt::from_mode(0o604)).unwrap();
    let live = dir.path().join("live.sock");
    let _listening = UnixListener::bind(&live).unwrap();
    let gone = dir.path().join("nothing-here");
    // A link to a file, to a socket someone listens on, and a dangling one.
    for to in [&target, &live, &gone] {
        let socket = dir.path().join("s.sock");
        symlink(to, &socket).unwrap();
        let before = std::fs::symlink_metadata(to).ok();
        // A group and a mode the target does not have: a chmod or chown through the link
        // would show on it.
        let extra = match &group {
            Some((name, _)) => format!("mode = \"0660\"\ngroup = {name:?}"),
            None => "mode = \"0660\"".to_string(),
        };
        let cfg = config(dir.path(), &socket, &extra);
        let err = refused(&cfg);
        assert!(
            err.contains(&socket.display().to_string()) && err.contains("not a socket"),
            "{err}"
        );
        let link = std::fs::symlink_metadata(&socket).unwrap();
        assert!(link.file_type().is_symlink(), "the link is left in place");
        assert_eq!(std::fs::read_link(&socket).unwrap(), *to);
        let after = std::fs::symlink_metadata(to).ok();
        assert_eq!(
            before.map(|m| (m.mode(), m.uid(), m.gid(), m.ino())),
            after.map(|m| (m.mode(), m.uid(), m.gid(), m.ino())),
            "{} changed",
            to.display()
        );
        std::fs::remove_file(&socket).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    assert!(is_socket(&live));
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    // Bound and closed: the file stays, connecting to it is refused.
    drop(UnixListener::bind(&socket).unwrap());
    let refused = std::os::unix::net::UnixStream::connect(&socket).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let cfg = config(dir.path(), &socket, "mode = \"0600\"");
    let mut d = Serve::start(dir.path(), &cfg, "022");
    d.wait_answering(&socket);
    assert!(
        d.log()
            .contains(&format!("removing the stale socket {}", socket.display())),
        "{}",
        d.log()
    );
    // Answering (above) where connecting was refused: a new socket is in its place.
    assert_eq!(mode(&socket), 0o600);
}

#[test]
fn a_second_daemon_leaves_the_first_ones_socket_alone() {
    let first = Daemon::start("");
    let inode = std::fs::symlink_metadata(&first.socket).unwrap().ino();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &first.socket, "");
    let err = refused(&cfg);
    assert!(
        err.contains(&format!(
            "another daemon is listening on {}",
            first.socket.display()
        )),
        "{err}"
    );
    // The same file, still answering.
    assert_eq!(
        std::fs::symlink_metadata(&first.socket).unwrap().ino(),
        inode
    );
    assert_eq!(first.status()["model_state"], "ready");
}

#[test]
fn a_file_or_directory_at_the_socket_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "data\n").unwrap();
    let directory = dir.path().join("dir.sock");
    std::fs::create_dir(&directory).unwrap();
    std::fs::write(directory.join("inside"), "x").unwrap();
    for path in [&file, &directory] {
        let cfg = config(dir.path(), path, "");
        let err = refused(&cfg);
        assert!(
            err.contains(&format!("{} exists and is not a socket", path.display())),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data\n");
    assert_eq!(
        std::fs::read_to_string(directory.join("inside")).unwrap(),
        "x"
    );
}

#[test]
fn a_socket_path_in_a_missing_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-such-dir").join("s.sock");
    let cfg = config(dir.path(), &socket, "");
    let err = refused(&cfg);
    assert!(
        err.contains(&format!("binding {}", socket.display()))
            && err.contains("does its directory exist")
            && err.contains("No such file or directory"),
        "{err}"
    );
    assert!(!dir.path().join("no-such-dir").exists());
}

#[test]
fn a_transport_that_cannot_start_takes_the_socket_file_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    // The HTTP port is taken, so the daemon stops after binding its socket.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = config(
        dir.path(),
        &socket,
        &format!("[http]\nlisten = \"127.0.0.1:{port}\""),
    );
    let err = refused(&cfg);
    assert!(err.contains(&port.to_string()), "{err}");
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "a socket file was left behind:\n{err}"
    );
}
