//! Just enough HTTP/1.1 to GET one document over plain TCP: `http://` URLs, one request
//! per connection (`Connection: close`), bodies by Content-Length, chunked, or to EOF.
//! The response parser is pure ([`parse_response`]); [`get`] does the socket work and
//! [`fetch`] the retries.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Responses larger than this are refused: a machine config is kilobytes.
const MAX_RESPONSE: usize = 16 << 20;
const MAX_HEAD: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url:?} is not a usable URL: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("resolving {host}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("response cut short: {0}")]
    Truncated(&'static str),
    #[error("HTTP {status} {reason}: {body:?}")]
    Status {
        status: u16,
        reason: String,
        body: String,
    },
}

impl FetchError {
    /// Whether trying again may help: the network and the server's 5xx, not a refusal.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Resolve { .. } | Self::Connect { .. } | Self::Io { .. } | Self::Truncated(_) => {
                true
            }
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            Self::BadUrl { .. } | Self::Malformed(_) => false,
        }
    }
}

/// An `http://` or `https://host[:port]/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// A name or an address; IPv6 without its brackets.
    pub host: String,
    pub port: u16,
    /// https: TLS, trusting only the CA pinned by `siderite.ca=`.
    pub tls: bool,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, FetchError> {
        let bad = |reason| FetchError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let (rest, tls) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, false),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (rest, true),
            Some(_) => return Err(bad("only http:// and https:// are supported")),
            None => return Err(bad("no scheme")),
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let target = target.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(bad("credentials in URLs are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") if tls => 443,
            None | Some("") => 80,
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        };
        Ok(Url {
            host: host.to_string(),
            port,
            tls,
            target,
        })
    }

    /// The `Host:` header's value.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The response in `buf`: `Some` once it is whole, `None` while more bytes are needed.
/// `eof`: the server has closed the connection, so a body without a length ends here.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, FetchError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(FetchError::Malformed("headers too large".into()));
        }
        return match eof {
            true => Err(FetchError::Truncated(
                "closed before the end of the headers",
            )),
            false => Ok(None),
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(FetchError::Malformed(format!(
            "status line {status_line:?}"
        )));
    }
    let status: u16 = code
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..1000).contains(c))
        .ok_or_else(|| FetchError::Malformed(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| FetchError::Malformed(format!("header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let rest = &buf[head_end + 4..];
    // An interim response (100 Continue) is followed by the real one.
    if (100..200).contains(&status) && status != 101 {
        return parse_response(rest, eof);
    }
    let mut response = Response {
        status,
        reason: reason.unwrap_or_default().to_string(),
        headers,
        body: Vec::new(),
    };
    if status == 204 || status == 304 {
        return Ok(Some(response));
    }
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| FetchError::Malformed(format!("Content-Length {len:?}")))?;
        (rest.len() >= len).then(|| rest[..len].to_vec())
    } else {
        eof.then(|| rest.to_vec())
    };
    match body {
        Some(body) => {
            response.body = body;
            Ok(Some(response))
        }
        None if eof => Err(FetchError::Truncated("closed before the end of the body")),
        None => Ok(None),
    }
}

/// A chunked body: `Some` once the last (empty) chunk is in.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&data[..eol]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| FetchError::Malformed(format!("chunk size {line:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err(FetchError::Malformed("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One GET on a fresh connection; any status is a response here. An https URL needs `ca`.
pub fn get(
    url: &Url,
    timeout: Duration,
    ca: Option<siderite::tls::CaPin>,
) -> Result<Response, FetchError> {
    if url.tls && ca.is_none() {
        return Err(FetchError::BadUrl {
            url: format!("https://{}{}", url.authority(), url.target),
            reason: "https needs siderite.ca= on the command line to pin the server's CA",
        });
    }
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| FetchError::Resolve {
            host: url.host.clone(),
            source,
        })?
        .collect();
    let mut last = FetchError::Resolve {
        host: url.host.clone(),
        source: std::io::Error::other("no addresses"),
    };
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                let io = |source| FetchError::Io { addr, source };
                stream.set_read_timeout(Some(timeout)).map_err(io)?;
                stream.set_write_timeout(Some(timeout)).map_err(io)?;
                return match ca.filter(|_| url.tls) {
                    None => exchange(stream, addr, url),
                    Some(pin) => {
                        let config = siderite::tls::client_config(pin, &[b"http/1.1"]);
                        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                            .map_err(|e| FetchError::Malformed(format!("server name: {e}")))?;
                        let conn = rustls::ClientConnection::new(config, name)
                            .map_err(|e| FetchError::Malformed(format!("TLS: {e}")))?;
                        exchange(rustls::StreamOwned::new(conn, stream), addr, url)
                    }
                };
            }
            Err(source) => {
                last = FetchError::Connect {
                    addr: addr.to_string(),
                    source,
                }
            }
        }
    }
    Err(last)
}

fn exchange(
    mut stream: impl Read + Write,
    addr: SocketAddr,
    url: &Url,
) -> Result<Response, FetchError> {
    let io = |source| FetchError::Io { addr, source };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: siderite-standin/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.target,
        url.authority(),
        env!("CARGO_PKG_VERSION"),
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = stream.read(&mut chunk).map_err(io)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(response) = parse_response(&buf, n == 0)? {
            return Ok(response);
        }
        if buf.len() > MAX_RESPONSE {
            return Err(FetchError::Malformed(format!(
                "larger than {MAX_RESPONSE} bytes"
            )));
        }
    }
}

/// How often and how patiently [`fetch`] tries.
#[derive(Debug, Clone)]
pub struct Retry {
    pub attempts: u32,
    /// The first pause; doubled after each failure, up to `max_delay`.
    pub delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            timeout: Duration::from_secs(10),
        }
    }
}

/// GETs `url` and returns the body of a 200. Network errors and 5xx are tried again
/// with back-off, `retry.attempts` times in all; any other status fails at once.
pub fn fetch(
    url: &Url,
    retry: &Retry,
    ca: Option<siderite::tls::CaPin>,
) -> Result<Vec<u8>, FetchError> {
    let mut delay = retry.delay;
    let mut attempt = 1;
    loop {
        let result = get(url, retry.timeout, ca).and_then(|r| match r.status {
            200 => Ok(r.body),
            status => Err(FetchError::Status {
                status,
                reason: r.reason,
                body: String::from_utf8_lossy(&r.body).into_owned(),
            }),
        });
        match result {
            Ok(body) => return Ok(body),
            Err(e) if e.retryable() && attempt < retry.attempts => {
                tracing::warn!(
                    "standin: GET {}:{}{} failed (attempt {attempt} of {}): {}; retrying in {:?}",
                    url.host,
                    url.port,
                    url.target,
                    retry.attempts,
                    crate::chain(&e),
                    delay
                );
                std::thread::sleep(delay);
                delay = (delay * 2).min(retry.max_delay);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://10.0.2.2:8080/config?t=abc").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("10.0.2.2", 8080, "/config?t=abc")
        );
        assert_eq!(u.authority(), "10.0.2.2:8080");
        let u = Url::parse("HTTP://meta.example?x=1#frag").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/?x=1"));
        assert_eq!(u.authority(), "meta.example");
        let u = Url::parse("http://[fd00::1]:81/c").unwrap();
        assert_eq!(
            (u.host.as_str(), u.authority()),
            ("fd00::1", "[fd00::1]:81".into())
        );
        let u = Url::parse("https://10.0.0.1/configdata/x?token=t").unwrap();
        assert!(u.tls);
        assert_eq!((u.port, u.authority()), (443, "10.0.0.1".into()));
        let e = get(&u, Duration::from_secs(1), None).unwrap_err();
        assert!(e.to_string().contains("siderite.ca="), "{e}");
        for bad in [
            "ftp://a/",
            "a/b",
            "http://:80/",
            "http://a:x/",
            "http://u@a/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_length_bodies_wait_for_every_byte() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhel";
        assert_eq!(parse_response(r, false).unwrap(), None);
        assert!(matches!(
            parse_response(r, true),
            Err(FetchError::Truncated(_))
        ));
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more";
        let got = parse_response(r, false).unwrap().unwrap();
        assert_eq!((got.status, got.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(got.header("x"), None);
    }

    #[test]
    fn bodies_without_length_end_at_eof() {
        let r = b"HTTP/1.0 403 Forbidden\r\nServer: t\r\n\r\nno such machine";
        assert_eq!(parse_response(r, false).unwrap(), None);
        let got = parse_response(r, true).unwrap().unwrap();
        assert_eq!(got.status, 403);
        assert_eq!(got.reason, "Forbidden");
        assert_eq!(got.body, b"no such machine");
        assert_eq!(got.header("SERVER"), Some("t"));
    }

    #[test]
    fn chunked_and_interim_responses() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=1\r\nmach\r\n3\r\nine\r\n0\r\n\r\n";
        assert_eq!(parse_response(r, false).unwrap().unwrap().body, b"machine");
        let cut = &r[..r.len() - 7];
        assert_eq!(parse_response(cut, false).unwrap(), None);
        assert!(parse_response(cut, true).is_err());
    }

    /// A loopback server answering the n-th connection with `replies[n]` (empty: close
    /// at once), then closing; how many connections it took.
    fn serve(replies: Vec<&'static [u8]>) -> (Url, std::thread::JoinHandle<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/c?x=1", listener.local_addr().unwrap())).unwrap();
        let t = std::thread::spawn(move || {
            let mut n = 0;
            for reply in replies {
                let (mut conn, _) = listener.accept().unwrap();
                n += 1;
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.ends_with(b"\r\n\r\n") {
                    let got = conn.read(&mut buf).unwrap();
                    assert!(got > 0);
                    head.extend_from_slice(&buf[..got]);
                }
                let head = String::from_utf8(head).unwrap();
                assert!(head.starts_with("GET /c?x=1 HTTP/1.1\r\n"), "{head}");
                assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
                conn.write_all(reply).unwrap();
            }
            n
        });
        (url, t)
    }

    fn quick() -> Retry {
        Retry {
            attempts: 3,
            delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn fetch_retries_cut_responses_and_5xx_but_not_refusals() {
        let (url, t) = serve(vec![
            b"",
            b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nmachine",
        ]);
        assert_eq!(fetch(&url, &quick(), None).unwrap(), b"machine");
        assert_eq!(t.join().unwrap(), 3);

        let (url, t) = serve(vec![b"HTTP/1.1 403 Forbidden\r\n\r\nnot you"]);
        let e = fetch(&url, &quick(), None).unwrap_err();
        assert_eq!(e.to_string(), "HTTP 403 Forbidden: \"not you\"");
        assert_eq!(t.join().unwrap(), 1, "a refusal is not retried");

        let (url, t) = serve(vec![b"", b"", b""]);
        assert!(matches!(
            fetch(&url, &quick(), None),
            Err(FetchError::Truncated(_))
        ));
        assert_eq!(t.join().unwrap(), 3, "attempts are bounded");
    }

    #[test]
    fn garbage_is_malformed_not_retried() {
        for r in [
            &b"SSH-2.0-x\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
        ] {
            let e = parse_response(r, true).unwrap_err();
            assert!(matches!(e, FetchError::Malformed(_)), "{e}");
            assert!(!e.retryable());
        }
        let status = |status| FetchError::Status {
            status,
            reason: String::new(),
            body: String::new(),
        };
        assert!(!status(403).retryable());
        assert!(status(503).retryable());
    }
}
