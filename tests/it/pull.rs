//! `bitnetd pull` against a hub-like HTTP server on loopback: the resolve URL answers
//! with the LFS headers and a redirect to a "CDN" path, which serves the bytes (with
//! `Range`). Nothing here touches the internet.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::thread;

use sha2::{Digest, Sha256};

const TOKEN: &str = "hf_test_token";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    /// Cut the next full transfer of the CDN file after this many bytes.
    cut_next_at: Option<usize>,
}

struct Hub {
    port: u16,
    state: Arc<Mutex<State>>,
    content: Arc<Vec<u8>>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn content() -> Vec<u8> {
    // 3 MB of a simple pattern: several reads, and a cut in the middle.
    (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect()
}

impl Hub {
    fn start() -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let content = Arc::new(content());
        let (s, c) = (state.clone(), content.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let (s, c) = (s.clone(), c.clone());
                thread::spawn(move || serve(stream, &s, &c));
            }
        });
        Hub {
            port,
            state,
            content,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn gets_of(&self, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path == path)
            .collect()
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, content: &[u8]) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        match k.to_ascii_lowercase().as_str() {
            "range" => range = Some(v.trim().to_owned()),
            "authorization" => auth = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    let cut = {
        let mut st = state.lock().unwrap();
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            auth: auth.clone(),
        });
        if method == "GET" && path.starts_with("/cdn/") && range.is_none() {
            st.cut_next_at.take()
        } else {
            None
        }
    };
    let head = method == "HEAD";
    let good_sha = sha256_hex(content);
    let lfs = |target: &str, sha: &str| {
        vec![
            ("Location", target.to_owned()),
            ("X-Linked-Etag", format!("\"{sha}\"")),
            ("X-Linked-Size", content.len().to_string()),
            (
                "X-Repo-Commit",
                "0123456789abcdef0123456789abcdef01234567".into(),
            ),
            // What a CDN-style ETag looks like: not a sha256.
            (
                "ETag",
                "\"0123456789abcdef0123456789abcdef01234567\"".into(),
            ),
            ("Content-Length", "0".into()),
        ]
    };
    match path.as_str() {
        // A renamed repository: a relative redirect on the hub itself.
        "/old/name/resolve/main/model.gguf" => respond(
            &mut stream,
            "307 Temporary Redirect",
            &[
                ("Location", "/o/n/resolve/main/model.gguf".into()),
                ("Content-Length", "0".into()),
            ],
            b"",
        ),
        "/o/n/resolve/main/model.gguf" => respond(
            &mut stream,
            "302 Found",
            &lfs("/cdn/model.gguf", &good_sha),
            b"",
        ),
        "/o/n/resolve/main/corrupt.gguf" => {
            // The CDN serves bytes whose sha256 is not the hub's oid.
            respond(
                &mut stream,
                "302 Found",
                &lfs("/cdn/corrupt.gguf", &"ab".repeat(32)),
                b"",
            )
        }
        "/o/private/resolve/main/model.gguf" => {
            if auth.as_deref() == Some(&format!("Bearer {TOKEN}")) {
                respond(
                    &mut stream,
                    "302 Found",
                    &lfs("/cdn/model.gguf", &good_sha),
                    b"",
                )
            } else {
                respond(
                    &mut stream,
                    "401 Unauthorized",
                    &[
                        ("X-Error-Code", "GatedRepo".into()),
                        ("Content-Length", "0".into()),
                    ],
                    b"",
                )
            }
        }
        "/cdn/model.gguf" | "/cdn/corrupt.gguf" => {
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .map(|s| s.parse::<usize>().unwrap());
            let (status, from) = match start {
                Some(from) => ("206 Partial Content", from),
                None => ("200 OK", 0),
            };
            let rest = &content[from..];
            let mut headers = vec![
                ("Content-Length", rest.len().to_string()),
                ("ETag", "\"cdn-etag-not-a-sha\"".into()),
            ];
            if start.is_some() {
                headers.push((
                    "Content-Range",
                    format!("bytes {from}-{}/{}", content.len() - 1, content.len()),
                ));
            }
            let body = if head {
                &[][..]
            } else {
                &rest[..cut.unwrap_or(rest.len())]
            };
            respond(&mut stream, status, &headers, body);
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            &[
                ("X-Error-Code", "EntryNotFound".into()),
                ("Content-Length", "0".into()),
            ],
            b"",
        ),
    }
    let _ = stream.flush();
    drop(reader);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn pull(endpoint: &str, token: Option<&str>, args: &[&str], dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bitnetd"));
    cmd.arg("pull")
        .args(args)
        .arg("-o")
        .arg(dir)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn downloads_through_the_cdn_redirect_and_checks_the_sha256() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let out = pull(&hub.endpoint(), None, &["o/n", "model.gguf"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let path = dir.path().join("model.gguf");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        path.display().to_string()
    );
    assert_eq!(std::fs::read(&path).unwrap(), *hub.content);
    assert!(!dir.path().join("model.gguf.part").exists());
    let gets = hub.gets_of("/cdn/model.gguf");
    assert_eq!(gets.len(), 1, "{:?}", hub.seen());
    assert_eq!(gets[0].range, None);

    // A second pull finds the file whole and checked, and downloads nothing.
    let out = pull(&hub.endpoint(), None, &["o/n", "model.gguf"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("already present"), "{}", stderr(&out));
    assert_eq!(hub.gets_of("/cdn/model.gguf").len(), 1);
}

#[test]
fn follows_a_relative_redirect_of_a_renamed_repository() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let out = pull(
        &hub.endpoint(),
        None,
        &["old/name", "model.gguf"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("model.gguf")).unwrap(),
        *hub.content
    );
}

#[test]
fn a_transfer_cut_off_midway_resumes_with_range() {
    let hub = Hub::start();
    hub.state.lock().unwrap().cut_next_at = Some(1_234_567);
    let dir = tempfile::tempdir().unwrap();
    let out = pull(&hub.endpoint(), None, &["o/n", "model.gguf"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("model.gguf")).unwrap(),
        *hub.content
    );
    let ranges: Vec<Option<String>> = hub
        .gets_of("/cdn/model.gguf")
        .into_iter()
        .map(|s| s.range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=1234567-".to_owned())]);
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));
}

#[test]
fn a_partial_file_from_an_earlier_run_is_resumed() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model.gguf.part"),
        &hub.content[..2_000_000],
    )
    .unwrap();
    let out = pull(&hub.endpoint(), None, &["o/n", "model.gguf"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("model.gguf")).unwrap(),
        *hub.content
    );
    let gets = hub.gets_of("/cdn/model.gguf");
    assert_eq!(gets.len(), 1);
    assert_eq!(gets[0].range.as_deref(), Some("bytes=2000000-"));
    assert!(
        stderr(&out).contains("resumed at byte 2000000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_corrupted_download_is_refused_and_deleted() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let out = pull(&hub.endpoint(), None, &["o/n", "corrupt.gguf"], dir.path());
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("corrupted download"), "{e}");
    assert!(e.contains(&"ab".repeat(32)), "names the hub's oid: {e}");
    assert!(
        e.contains(&sha256_hex(&hub.content)),
        "names what arrived: {e}"
    );
    assert!(!dir.path().join("corrupt.gguf").exists());
    assert!(!dir.path().join("corrupt.gguf.part").exists());
}

#[test]
fn a_gated_repository_needs_hf_token() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let out = pull(
        &hub.endpoint(),
        None,
        &["o/private", "model.gguf"],
        dir.path(),
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("401") && e.contains("HF_TOKEN"), "{e}");
    assert!(e.contains("none was sent"), "{e}");

    let out = pull(
        &hub.endpoint(),
        Some("wrong"),
        &["o/private", "model.gguf"],
        dir.path(),
    );
    assert!(
        stderr(&out).contains("was sent and refused"),
        "{}",
        stderr(&out)
    );

    let out = pull(
        &hub.endpoint(),
        Some(TOKEN),
        &["o/private", "model.gguf"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("model.gguf")).unwrap(),
        *hub.content
    );
    let heads: Vec<Seen> = hub
        .seen()
        .into_iter()
        .filter(|s| s.path == "/o/private/resolve/main/model.gguf")
        .collect();
    assert_eq!(
        heads.last().unwrap().auth.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
}

#[test]
fn a_missing_file_is_a_clear_404() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let out = pull(&hub.endpoint(), None, &["o/n", "nope.gguf"], dir.path());
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("404") && e.contains("no such file"), "{e}");
    assert!(e.contains("/o/n/resolve/main/nope.gguf"), "{e}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn no_network_is_a_clear_error() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = pull(
        &format!("http://127.0.0.1:{port}"),
        None,
        &["o/n", "model.gguf"],
        dir.path(),
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("cannot reach"), "{e}");
    // Nothing was written.
    let mut leftover = String::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        leftover.push_str(&entry.unwrap().file_name().to_string_lossy());
    }
    assert!(leftover.is_empty(), "{leftover}");
}
