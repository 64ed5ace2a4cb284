//! `pull`: downloads one file of a Hugging Face repository, resumable and checked.
//!
//! The hub answers `GET <endpoint>/<repo>/resolve/<revision>/<file>` for a large (LFS)
//! file with a redirect to its CDN, and puts the file's sha256 in `X-Linked-Etag` on that
//! first response (the CDN's own ETag, after the redirect, is not a sha256). So redirects
//! are followed here, one at a time, after reading the hub's headers. A transfer that
//! breaks off leaves `<file>.part` behind; the next attempt (in this run or a later one)
//! asks for the rest with `Range` and hashes the part already on disk first.

mod request;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

pub use request::{HubError, Resolved};

/// The file `pull` fetches when none is named.
pub const DEFAULT_REPO: &str = "microsoft/BitNet-b1.58-2B-4T-gguf";
pub const DEFAULT_FILE: &str = "ggml-model-i2_s.gguf";
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The system-wide model directory the systemd unit's daemon reads.
pub const SYSTEM_MODEL_DIR: &str = "/var/lib/bitnetd/models";
/// Attempts at one file in one run: a broken-off transfer resumes up to this often.
const ATTEMPTS: u32 = 4;

/// Where the hub is and who asks: `HF_ENDPOINT` and `HF_TOKEN`, as huggingface_hub reads them.
#[derive(Debug, Clone)]
pub struct Hub {
    pub endpoint: String,
    pub token: Option<String>,
}

impl Hub {
    pub fn from_env() -> Self {
        let non_empty = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Hub {
            endpoint: non_empty("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            token: non_empty("HF_TOKEN").map(|t| t.trim().to_owned()),
        }
    }
}

/// One file of one repository at one revision.
#[derive(Debug, Clone)]
pub struct FileRef {
    pub repo: String,
    pub file: String,
    pub revision: String,
}

impl FileRef {
    /// Checks the names: `owner/name` and a relative file path without `..`, so that the
    /// file lands inside the target directory.
    pub fn new(repo: &str, file: &str, revision: &str) -> Result<Self, HubError> {
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2
            || parts
                .iter()
                .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(HubError::BadName(format!(
                "repository {repo:?} is not of the form owner/name"
            )));
        }
        let relative = Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if file.is_empty() || !relative {
            return Err(HubError::BadName(format!(
                "file {file:?} is not a path inside the repository"
            )));
        }
        if revision.is_empty() || revision.contains("..") {
            return Err(HubError::BadName(format!("revision {revision:?}")));
        }
        Ok(FileRef {
            repo: repo.to_owned(),
            file: file.to_owned(),
            revision: revision.to_owned(),
        })
    }

    fn url(&self, endpoint: &str) -> String {
        // Branch names may hold '/', which the hub takes URL-encoded.
        let revision = self.revision.replace('/', "%2F");
        format!("{endpoint}/{}/resolve/{revision}/{}", self.repo, self.file)
    }
}

/// The default model directory: /var/lib/bitnetd/models when it exists and this user may
/// write it, else `<cache>/models` (`$XDG_CACHE_HOME/bitnetd` or `~/.cache/bitnetd`).
pub fn default_model_dir() -> Option<PathBuf> {
    let system = Path::new(SYSTEM_MODEL_DIR);
    if system.is_dir() && writable(system) {
        return Some(system.to_owned());
    }
    crate::dummy::user_cache_dir().map(|d| d.join("models"))
}

/// Whether a file can be created in `dir` (permission bits do not tell for root, ACLs or
/// read-only mounts; trying does).
fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".bitnetd-write-test-{}", std::process::id()));
    let ok = File::create(&probe).is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// What `pull` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Downloaded (`resumed_from` bytes were already on disk from an earlier attempt).
    Downloaded { resumed_from: u64 },
    /// The file was already there with the hub's size and sha256.
    AlreadyPresent,
}

/// Receives progress: the total size once known, then bytes as they arrive.
pub trait Progress {
    fn start(&mut self, total: Option<u64>, already: u64);
    fn advance(&mut self, bytes: u64);
    fn message(&mut self, text: &str);
}

/// Downloads `file` to `dest`, resuming `dest.part` when there is one, and checks the
/// hub's sha256 when it gives one (LFS files). A corrupted download is deleted.
pub fn pull(
    hub: &Hub,
    file: &FileRef,
    dest: &Path,
    progress: &mut dyn Progress,
) -> Result<Outcome, HubError> {
    let agent = request::agent();
    let resolved = request::resolve(&agent, hub, &file.url(&hub.endpoint))?;
    if dest.is_file() && matches_hub(dest, &resolved)? {
        return Ok(Outcome::AlreadyPresent);
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| HubError::io(dir, e))?;
    }
    let part = part_path(dest);
    let mut resumed_from = None;
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        resumed_from.get_or_insert(have);
        match fetch(&agent, hub, &resolved, &part, have, progress) {
            Ok(()) => {
                last_error = None;
                break;
            }
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                progress.message(&format!("transfer broke off ({e}); resuming"));
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(e) = last_error {
        return Err(e);
    }
    verify(&part, &resolved, dest)?;
    fs::rename(&part, dest).map_err(|e| HubError::io(dest, e))?;
    Ok(Outcome::Downloaded {
        resumed_from: resumed_from.unwrap_or(0),
    })
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_owned();
    name.push(".part");
    dest.with_file_name(name)
}

/// Appends the bytes from `have` on to `part`; a server that ignores the range gets
/// the whole file written again from the start.
fn fetch(
    agent: &ureq::Agent,
    hub: &Hub,
    resolved: &Resolved,
    part: &Path,
    have: u64,
    progress: &mut dyn Progress,
) -> Result<(), HubError> {
    if resolved.size == Some(have) {
        return Ok(());
    }
    let (mut body, offset) = request::download(agent, hub, resolved, have)?;
    let mut out = OpenOptions::new()
        .create(true)
        .append(offset > 0)
        .write(true)
        .truncate(offset == 0)
        .open(part)
        .map_err(|e| HubError::io(part, e))?;
    progress.start(resolved.size, offset);
    let mut buf = vec![0u8; 256 << 10];
    let mut written = offset;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(HubError::Transfer {
                    url: resolved.download_url.clone(),
                    at: written,
                    problem: e.to_string(),
                });
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| HubError::io(part, e))?;
        written += n as u64;
        progress.advance(n as u64);
    }
    out.sync_all().map_err(|e| HubError::io(part, e))?;
    match resolved.size {
        Some(size) if written < size => Err(HubError::Transfer {
            url: resolved.download_url.clone(),
            at: written,
            problem: format!("the connection ended {} bytes early", size - written),
        }),
        _ => Ok(()),
    }
}

/// Whether the file at `path` has the hub's size and sha256 (only the size when the
/// hub gives no sha256).
fn matches_hub(path: &Path, resolved: &Resolved) -> Result<bool, HubError> {
    let len = fs::metadata(path).map_err(|e| HubError::io(path, e))?.len();
    if resolved.size.is_some_and(|s| s != len) {
        return Ok(false);
    }
    match &resolved.sha256 {
        Some(expected) => Ok(&sha256_of(path)? == expected),
        None => Ok(resolved.size.is_some()),
    }
}

/// Refuses (and deletes) a download whose size or sha256 is not the hub's.
fn verify(part: &Path, resolved: &Resolved, dest: &Path) -> Result<(), HubError> {
    let len = fs::metadata(part).map_err(|e| HubError::io(part, e))?.len();
    let refuse = |problem: String| {
        let _ = fs::remove_file(part);
        HubError::Corrupted {
            path: dest.to_owned(),
            problem,
        }
    };
    if let Some(size) = resolved.size.filter(|&s| s != len) {
        return Err(refuse(format!("{len} bytes, the hub says {size}")));
    }
    match &resolved.sha256 {
        Some(expected) => {
            let got = sha256_of(part)?;
            if &got != expected {
                return Err(refuse(format!(
                    "sha256 {got}, the hub's LFS oid is {expected}; the download was deleted"
                )));
            }
        }
        None => log::info!(
            "{}: the hub gives no sha256 for this file (not stored in LFS); size checked only",
            dest.display()
        ),
    }
    Ok(())
}

pub fn sha256_of(path: &Path) -> Result<String, HubError> {
    let mut file = File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_request() {
        assert!(FileRef::new("microsoft/BitNet-b1.58-2B-4T-gguf", "a.gguf", "main").is_ok());
        assert!(FileRef::new("o/n", "sub/dir/a.gguf", "v1.0").is_ok());
        for (repo, file) in [
            ("noslash", "a"),
            ("a/b/c", "a"),
            ("o/..", "a"),
            ("o/n", "../etc/passwd"),
            ("o/n", "/abs"),
            ("o/n", ""),
        ] {
            let e = FileRef::new(repo, file, "main").unwrap_err().to_string();
            assert!(e.contains(repo) || e.contains(file), "{e}");
        }
    }

    #[test]
    fn urls_follow_the_hub_layout() {
        let f = FileRef::new("o/n", "d/f.gguf", "refs/pr/1").unwrap();
        assert_eq!(
            f.url("http://127.0.0.1:9"),
            "http://127.0.0.1:9/o/n/resolve/refs%2Fpr%2F1/d/f.gguf"
        );
    }

    #[test]
    fn part_file_sits_beside_the_destination() {
        assert_eq!(
            part_path(Path::new("/m/x.gguf")),
            Path::new("/m/x.gguf.part")
        );
    }
}
