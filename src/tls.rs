//! TLS on the client side. Every siderite client (the agent, the CLI, the install
//! stand-in, the tests) trusts exactly one CA: the server's own, named by the SHA-256 of its
//! certificate (`siderite.ca=` on the agent's command line, `ca-sha256` in an operator's
//! config). Nothing else is trusted: not the system roots, not a CA with the same name.
//!
//! The server sends its certificate chain (leaf, then CA); the client finds the CA among
//! the certificates sent by its digest and checks the leaf against that CA alone with
//! webpki (signature, validity, the serverAuth key usage). The host name is not checked:
//! the pin names the trust domain, and this CA issues nothing but siderite server
//! certificates, so an agent that reached its server by an address the certificate does
//! not list (a NAT, a renumbered rack) still talks to it, while anything the CA did not
//! sign is refused.
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

/// SHA-256 of the DER of the CA certificate a client trusts.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaPin(pub [u8; 32]);

impl CaPin {
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl fmt::Display for CaPin {
    /// `sha256:<64 hex digits>`, the form `siderite.ca=` and the configs use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaPin({self})")
    }
}

impl FromStr for CaPin {
    type Err = String;

    /// `sha256:<hex>` or bare hex, 64 digits, either case.
    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.strip_prefix("sha256:").unwrap_or(s);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "a CA pin is sha256: and 64 hex digits, not {} characters",
                s.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(chunk).map_err(|e| e.to_string())?;
            out[i] = u8::from_str_radix(text, 16).map_err(|e| e.to_string())?;
        }
        Ok(Self(out))
    }
}

// ring, not aws-lc: no C/cmake build and a smaller static agent. rustls deprecates it only
// for lacking post-quantum key exchange.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks the server's chain against the pinned CA only.
#[derive(Debug)]
struct PinnedCa {
    pin: CaPin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if CaPin::of(end_entity.as_ref()) == self.pin {
            return Err(rustls::Error::General(
                "the server presents the CA certificate itself as its certificate".into(),
            ));
        }
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaPin::of(c.as_ref()) == self.pin)
        else {
            let sent = intermediates
                .iter()
                .map(|c| CaPin::of(c.as_ref()).to_string())
                .collect::<Vec<_>>();
            return Err(rustls::Error::General(format!(
                "the server's certificate does not chain to the pinned CA {} (it sent CA {})",
                self.pin,
                if sent.is_empty() {
                    "none".to_string()
                } else {
                    sent.join(", ")
                }
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("the pinned CA: {e}")))?;
        match webpki.verify_server_cert(end_entity, &[], server_name, ocsp_response, now) {
            Ok(ok) => Ok(ok),
            // The pin, not the name, says who the server is (see the module's doc).
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config that trusts only the CA `pin` names, speaking `alpn` (`h2` for gRPC,
/// `http/1.1` for plain HTTPS).
pub fn client_config(pin: CaPin, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa { pin, provider }))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// `host:port` out of `addr`, which may also be `https://host:port[/...]` (or `http://`:
/// every siderite connection is TLS whatever the scheme says).
pub fn host_port(addr: &str) -> Result<(String, u16), String> {
    let rest = addr
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(addr)
        .split('/')
        .next()
        .unwrap_or_default();
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (ip, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{addr:?}: expected [v6]:port"))?;
        (ip.to_string(), port)
    } else {
        let (h, p) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("{addr:?}: expected host:port"))?;
        (h.to_string(), p)
    };
    let port = port
        .parse()
        .map_err(|_| format!("{addr:?}: {port:?} is not a port"))?;
    if host.is_empty() {
        return Err(format!("{addr:?}: no host"));
    }
    Ok((host, port))
}

/// Errors of [`connect`], with what was tried.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Address(String),
    #[error("TCP connection to {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {0:?}", .timeout)]
    Timeout { addr: String, timeout: Duration },
}

/// One TLS connection to `host:port` (any TCP source address).
pub async fn connect(
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ConnectError> {
    connect_from(None, host, port, tls, timeout).await
}

/// A TCP connection to `addr` from the source address `from` (any when none).
async fn tcp_from(
    from: Option<std::net::IpAddr>,
    addr: &str,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(from) = from else {
        return tokio::net::TcpStream::connect(addr).await;
    };
    let target = tokio::net::lookup_host(addr)
        .await?
        .find(|a| a.is_ipv4() == from.is_ipv4())
        .ok_or_else(|| std::io::Error::other("no address of the source's family"))?;
    let socket = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(from, 0))?;
    socket.connect(target).await
}

/// [`connect`] from a chosen source address (tests and benchmarks on loopback act as many
/// machines by using 127.0.0.0/8).
pub async fn connect_from(
    from: Option<std::net::IpAddr>,
    host: &str,
    port: u16,
    tls: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ConnectError> {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| ConnectError::Address(format!("{host:?}: {e}")))?;
    let work = async {
        let tcp = tcp_from(from, &addr)
            .await
            .map_err(|source| ConnectError::Tcp {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                addr: addr.clone(),
                source,
            })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ConnectError::Timeout {
            addr: addr.clone(),
            timeout,
        })?
}

/// A gRPC channel to `addr` over TLS that trusts only the CA `pin` names.
pub async fn channel(
    addr: &str,
    pin: CaPin,
    timeout: Duration,
) -> Result<tonic::transport::Channel, ConnectError> {
    channel_from(None, addr, pin, timeout).await
}

/// [`channel`] from a chosen source address.
pub async fn channel_from(
    from: Option<std::net::IpAddr>,
    addr: &str,
    pin: CaPin,
    timeout: Duration,
) -> Result<tonic::transport::Channel, ConnectError> {
    let (host, port) = host_port(addr).map_err(ConnectError::Address)?;
    let tls = client_config(pin, &[b"h2"]);
    // Fail here, with the reason, rather than inside tonic's reconnect machinery.
    let first = connect_from(from, &host, port, tls.clone(), timeout).await?;
    let first = std::sync::Mutex::new(Some(first));
    let uri_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{uri_host}:{port}"))
        .map_err(|e| ConnectError::Address(format!("{addr:?}: {e}")))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let first = Arc::new(first);
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let tls = tls.clone();
        let host = host.clone();
        let first = first.clone();
        async move {
            if let Some(s) = first.lock().expect("connection slot").take() {
                return Ok(hyper_util::rt::TokioIo::new(s));
            }
            connect_from(from, &host, port, tls, timeout)
                .await
                .map(hyper_util::rt::TokioIo::new)
                .map_err(|e| std::io::Error::other(e.to_string()))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Tls {
            addr: addr.to_string(),
            source: std::io::Error::other(e.to_string()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print() {
        let p = CaPin::of(b"x");
        let text = p.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 71, "{text}");
        assert_eq!(text.parse::<CaPin>().unwrap(), p);
        assert_eq!(text[7..].to_uppercase().parse::<CaPin>().unwrap(), p);
        assert!("sha256:abc".parse::<CaPin>().is_err());
        assert!(format!("sha256:{}", "g".repeat(64))
            .parse::<CaPin>()
            .is_err());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            host_port("10.0.0.1:7443").unwrap(),
            ("10.0.0.1".into(), 7443)
        );
        assert_eq!(
            host_port("https://[fd00::1]:7443/x").unwrap(),
            ("fd00::1".into(), 7443)
        );
        assert_eq!(host_port("http://a.b:1").unwrap(), ("a.b".into(), 1));
        assert!(host_port("a.b").is_err());
        assert!(host_port(":1").is_err());
    }
}
