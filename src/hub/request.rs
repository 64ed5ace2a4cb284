//! The HTTP side of `pull`: resolving a file's URL (following the hub's redirects one at
//! a time to read its headers) and asking for its bytes, with the errors a user can act on.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::Agent;
use ureq::http::{HeaderMap, Response, StatusCode};

use super::Hub;

/// Redirects followed while resolving (the hub renames repositories with relative ones,
/// then sends LFS files to the CDN).
const MAX_REDIRECTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    BadName(String),
    #[error(
        "{url}: {status} (the repository is private or gated, or the token is wrong): set HF_TOKEN \
         to a token that may read it{}",
        if *.token_sent { "; the token in HF_TOKEN was sent and refused" } else { ", none was sent" }
    )]
    Unauthorized {
        url: String,
        status: u16,
        token_sent: bool,
    },
    #[error("{url}: 404 Not Found: {what}")]
    NotFound { url: String, what: String },
    #[error("{url}: HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("cannot reach {url} (no network, or HF_ENDPOINT is wrong?): {problem}")]
    Network { url: String, problem: String },
    #[error("{url}: transfer broke off at byte {at}: {problem}")]
    Transfer {
        url: String,
        at: u64,
        problem: String,
    },
    #[error("{url}: {problem}")]
    Protocol { url: String, problem: String },
    #[error("{}: corrupted download: {problem}", .path.display())]
    Corrupted { path: PathBuf, problem: String },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl HubError {
    pub(super) fn io(path: &Path, source: std::io::Error) -> Self {
        HubError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Worth another attempt with `Range`: the connection, not the server's answer, failed.
    pub(super) fn is_transient(&self) -> bool {
        matches!(self, HubError::Transfer { .. } | HubError::Network { .. })
            || matches!(self, HubError::Status { status, .. } if *status >= 500)
    }
}

/// What the hub says about a file.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Where the bytes are (the CDN for LFS files, else the resolve URL itself).
    pub download_url: String,
    /// Whether `download_url` is on the hub's host (the token goes only there).
    pub on_hub: bool,
    /// The LFS oid from `X-Linked-Etag`: the file's sha256, lower-case hex.
    pub sha256: Option<String>,
    /// `X-Linked-Size`, or the Content-Length of a direct answer.
    pub size: Option<u64>,
}

pub(super) fn agent() -> Agent {
    Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled transfer is dropped and resumed rather than waited on forever.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("bitnetd/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn authorized(
    builder: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
    hub: &Hub,
    on_hub: bool,
) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
    match (&hub.token, on_hub) {
        (Some(token), true) => builder.header("Authorization", format!("Bearer {token}")),
        _ => builder,
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `"<hex>"` or `W/"<hex>"` → `<hex>` when it is a sha256 (64 hex digits).
fn sha256_etag(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches("W/").trim_matches('"');
    (v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_ascii_lowercase())
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// `location` made absolute against `base`.
fn join(base: &str, location: &str) -> String {
    if location.contains("://") {
        location.to_owned()
    } else if location.starts_with('/') {
        let scheme = base.split_once("://").map_or("https", |(s, _)| s);
        format!("{scheme}://{}{location}", host_of(base))
    } else {
        let dir = base.rsplit_once('/').map_or(base, |(d, _)| d);
        format!("{dir}/{location}")
    }
}

fn network(url: &str, e: ureq::Error) -> HubError {
    HubError::Network {
        url: url.to_owned(),
        problem: e.to_string(),
    }
}

/// The error for a status the hub answered instead of the file.
fn refused(url: &str, response: Response<ureq::Body>, token_sent: bool) -> HubError {
    let status = response.status();
    let code = header(response.headers(), "x-error-code").map(str::to_owned);
    let message = header(response.headers(), "x-error-message").map(str::to_owned);
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HubError::Unauthorized {
            url: url.to_owned(),
            status: status.as_u16(),
            token_sent,
        },
        StatusCode::NOT_FOUND => {
            let what = match code.as_deref() {
                Some("RepoNotFound") => "no such repository (or it is private: set HF_TOKEN)",
                Some("RevisionNotFound") => "no such revision in the repository",
                Some("EntryNotFound") => "the repository has no such file at that revision",
                _ => "no such repository, revision or file",
            };
            HubError::NotFound {
                url: url.to_owned(),
                what: what.to_owned(),
            }
        }
        _ => {
            let mut detail = message.unwrap_or_default();
            if detail.is_empty() {
                let mut body = String::new();
                let _ = response
                    .into_body()
                    .into_reader()
                    .take(300)
                    .read_to_string(&mut body);
                detail = body.trim().to_owned();
            }
            HubError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
                detail,
            }
        }
    }
}

/// Asks the hub about `url` (HEAD), following its redirects by hand: the first response
/// that carries `X-Linked-Etag` gives the sha256 and size, and its `Location` the bytes.
pub(super) fn resolve(agent: &Agent, hub: &Hub, url: &str) -> Result<Resolved, HubError> {
    let hub_host = host_of(&hub.endpoint).to_owned();
    let mut current = url.to_owned();
    let (mut sha256, mut size) = (None, None);
    for _ in 0..=MAX_REDIRECTS {
        let on_hub = host_of(&current) == hub_host;
        let token_sent = on_hub && hub.token.is_some();
        let response = authorized(agent.head(&current), hub, on_hub)
            .call()
            .map_err(|e| network(&current, e))?;
        let headers = response.headers();
        if sha256.is_none() {
            sha256 = header(headers, "x-linked-etag").and_then(sha256_etag);
            size = header(headers, "x-linked-size").and_then(|s| s.trim().parse().ok());
        }
        let status = response.status();
        if status.is_redirection() {
            let location = header(headers, "location").ok_or_else(|| HubError::Protocol {
                url: current.clone(),
                problem: format!("{status} without a Location"),
            })?;
            let next = join(&current, location);
            // The hub's own answer about an LFS file is final: its bytes are elsewhere.
            if sha256.is_some() {
                let on_hub = host_of(&next) == hub_host;
                return Ok(Resolved {
                    download_url: next,
                    on_hub,
                    sha256,
                    size,
                });
            }
            current = next;
            continue;
        }
        if !status.is_success() {
            return Err(refused(&current, response, token_sent));
        }
        let length = header(headers, "content-length").and_then(|s| s.trim().parse().ok());
        return Ok(Resolved {
            download_url: current,
            on_hub,
            sha256,
            size: size.or(length),
        });
    }
    Err(HubError::Protocol {
        url: url.to_owned(),
        problem: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

/// GETs the file from byte `from` on. Returns the body and the offset it starts at
/// (0 when the server ignored the range and sends everything).
pub(super) fn download(
    agent: &Agent,
    hub: &Hub,
    resolved: &Resolved,
    from: u64,
) -> Result<(Box<dyn Read + Send>, u64), HubError> {
    let url = &resolved.download_url;
    let mut builder = authorized(agent.get(url), hub, resolved.on_hub);
    if from > 0 {
        builder = builder.header("Range", format!("bytes={from}-"));
    }
    let response = builder.call().map_err(|e| network(url, e))?;
    let status = response.status();
    let offset = match status {
        StatusCode::PARTIAL_CONTENT if from > 0 => {
            let start = header(response.headers(), "content-range")
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.trim().parse::<u64>().ok());
            if start != Some(from) {
                return Err(HubError::Protocol {
                    url: url.clone(),
                    problem: format!(
                        "asked for bytes {from}- and got Content-Range {:?}",
                        header(response.headers(), "content-range")
                    ),
                });
            }
            from
        }
        StatusCode::OK => 0,
        // The part on disk is already whole (or longer: start again).
        StatusCode::RANGE_NOT_SATISFIABLE => {
            return Err(HubError::Protocol {
                url: url.clone(),
                problem: format!(
                    "the server has fewer than {from} bytes; delete the .part file and retry"
                ),
            });
        }
        _ => {
            return Err(refused(
                url,
                response,
                resolved.on_hub && hub.token.is_some(),
            ));
        }
    };
    Ok((Box::new(response.into_body().into_reader()), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_that_are_sha256_are_taken() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_etag(&format!("\"{hex}\"")), Some(hex.clone()));
        assert_eq!(
            sha256_etag(&format!("W/\"{}\"", hex.to_uppercase())),
            Some(hex)
        );
        // A git blob id (sha1) or a CDN ETag is not a sha256.
        assert_eq!(
            sha256_etag("\"0123456789abcdef0123456789abcdef01234567\""),
            None
        );
        assert_eq!(sha256_etag("\"d41d8cd98f00b204e9800998ecf8427e-12\""), None);
    }

    #[test]
    fn locations_are_made_absolute() {
        let base = "http://127.0.0.1:80/o/n/resolve/main/f";
        assert_eq!(join(base, "/x/y"), "http://127.0.0.1:80/x/y");
        assert_eq!(join(base, "https://cdn/z"), "https://cdn/z");
        assert_eq!(join(base, "g"), "http://127.0.0.1:80/o/n/resolve/main/g");
        assert_eq!(host_of("https://huggingface.co/a"), "huggingface.co");
    }
}
