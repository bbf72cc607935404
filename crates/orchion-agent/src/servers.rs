//! The servers an agent may talk to: several replicas of one control plane. Every call goes to
//! the current one; a call that fails in transport (refused, reset, timed out) moves the agent
//! on to the next, so the calls after it reach another replica. Liveness, credentials and
//! leases live in the shared store, so the agent keeps its node identity and its running work
//! while it moves: its next heartbeat and lease extension simply arrive elsewhere.
//!
//! A DNS name that resolves to several addresses is also tried address by address when a
//! connection is made; several names (or addresses) are listed with `--server a,b,c`.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tonic::{
    body::Body,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tower::Service;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the agent reaches `https://` servers.
#[derive(Debug, Clone, Default)]
pub struct AgentTls {
    /// The authority (PEM) the server's certificate must chain to; the system's roots when
    /// absent.
    pub ca: Option<std::path::PathBuf>,
    /// The agent's own certificate (PEM), for servers that require one (mutual TLS).
    pub cert: Option<std::path::PathBuf>,
    /// The key of `cert` (PEM).
    pub key: Option<std::path::PathBuf>,
}

impl AgentTls {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Whether TLS itself refuses the connection to `url`, an `https://` server: a handshake
    /// that fails (a certificate that does not verify, a server that does not speak TLS), or a
    /// client certificate refused just after it (TLS 1.3 says so only then). `None` when it is
    /// not TLS that stops the connection (the server is down, say) or `url` is not `https://`.
    ///
    /// The channel's own errors cannot say this: HTTP/2 keeps only the text of an I/O error.
    pub(crate) async fn refusal(&self, url: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let uri: http::Uri = url.parse().ok()?;
        if uri.scheme_str() != Some("https") {
            return None;
        }
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
        let config = self.rustls_config().ok()?;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, uri.port_u16().unwrap_or(443))),
        )
        .await
        .ok()?
        .ok()?;
        let connecting = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
        let mut tls = match tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .ok()?
        {
            Ok(tls) => tls,
            Err(e) => return rustls_error(&e),
        };
        // HTTP/2's client preface and an empty SETTINGS frame: a server that took this client
        // answers with its SETTINGS, one that refused its certificate with an alert.
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
        if let Err(e) = tls.write_all(preface).await {
            return rustls_error(&e);
        }
        let mut answer = [0u8; 9];
        match tokio::time::timeout(CONNECT_TIMEOUT, tls.read(&mut answer)).await {
            Ok(Err(e)) => rustls_error(&e),
            _ => None,
        }
    }

    /// The probe's rustls configuration: the same trust and identity as the channel's.
    fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
                    roots
                        .add(cert.map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?;
                }
            }
            None => {
                let _ =
                    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| e.to_string())?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn client_config(&self) -> Result<ClientTlsConfig, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => config.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err("--cert and --key go together".into()),
        }
        Ok(config)
    }
}

/// The TLS error inside an I/O error, said in words.
fn rustls_error(error: &std::io::Error) -> Option<String> {
    error
        .get_ref()?
        .downcast_ref::<rustls::Error>()
        .map(ToString::to_string)
}

/// A gRPC channel over several servers, moving on to the next when one fails.
#[derive(Clone)]
pub(crate) struct Servers {
    inner: Arc<Inner>,
}

struct Inner {
    urls: Vec<String>,
    channels: Vec<Channel>,
    /// Which server calls go to now.
    current: Mutex<usize>,
}

impl Servers {
    /// Lazily connecting channels to each of `urls`, with the deadline of the longest call.
    /// An `https://` server is reached over TLS only, verified with `tls.ca` (or the system's
    /// roots), presenting `tls.cert` when given; an `http://` one only when no TLS option is.
    pub(crate) fn new(
        urls: &[String],
        longest_call: Duration,
        tls: &AgentTls,
    ) -> Result<Self, (String, String)> {
        let mut channels = Vec::with_capacity(urls.len());
        for url in urls {
            let mut endpoint =
                Endpoint::from_shared(url.clone()).map_err(|e| (url.clone(), e.to_string()))?;
            if url.starts_with("https://") {
                let config = tls.client_config().map_err(|e| (url.clone(), e))?;
                endpoint = endpoint
                    .tls_config(config)
                    .map_err(|e| (url.clone(), e.to_string()))?;
            } else if tls.is_set() {
                return Err((
                    url.clone(),
                    "--ca, --cert and --key are for TLS, but this address is plaintext: use https://"
                        .into(),
                ));
            }
            let endpoint = endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                // The longest call is a claim's long poll: a channel-wide timeout shorter than
                // it failed every idle claim. Each call carries its own deadline too, and
                // HTTP/2 pings find a dead or partitioned server.
                .timeout(longest_call)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            channels.push(endpoint.connect_lazy());
        }
        if channels.is_empty() {
            return Err((String::new(), "no server address given".into()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                urls: urls.to_vec(),
                channels,
                current: Mutex::new(0),
            }),
        })
    }

    fn current(&self) -> usize {
        *self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The address calls go to now.
    pub(crate) fn url(&self) -> &str {
        &self.inner.urls[self.current()]
    }

    /// Server `which` failed a call: the next calls go to the one after it (unless another
    /// call already moved on).
    fn failed(&self, which: usize, error: &tonic::transport::Error) {
        let n = self.inner.channels.len();
        if n == 1 {
            return;
        }
        let mut current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == which {
            *current = (which + 1) % n;
            tracing::warn!(
                failed = %self.inner.urls[which],
                next = %self.inner.urls[*current],
                %error,
                "a server did not answer; moving to the next"
            );
        }
    }
}

impl Service<http::Request<Body>> for Servers {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    /// Always ready: readiness is the chosen channel's, awaited inside the call.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let which = self.current();
        let mut channel = self.inner.channels[which].clone();
        let servers = self.clone();
        Box::pin(async move {
            let result = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            if let Err(e) = &result {
                servers.failed(which, e);
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_that_is_not_a_uri_is_named() {
        let none = AgentTls::default();
        let bad = Servers::new(
            &["http://ok:1".into(), "not a uri".into()],
            Duration::from_secs(1),
            &none,
        );
        assert!(matches!(bad, Err((url, _)) if url == "not a uri"));
        assert!(Servers::new(&[], Duration::from_secs(1), &none).is_err());
    }

    #[tokio::test]
    async fn a_failed_call_moves_the_next_calls_to_the_next_server() {
        // Two ports nobody listens on: each failed call moves on, round the list.
        let dead = |port: u16| format!("http://127.0.0.1:{port}");
        let servers = Servers::new(
            &[dead(1), dead(2)],
            Duration::from_secs(1),
            &AgentTls::default(),
        )
        .unwrap();
        assert_eq!(servers.url(), dead(1));
        let mut client = servers.clone();
        let request = || http::Request::new(Body::empty());
        assert!(client.call(request()).await.is_err());
        assert_eq!(servers.url(), dead(2));
        assert!(client.call(request()).await.is_err());
        assert_eq!(servers.url(), dead(1));
    }
}
