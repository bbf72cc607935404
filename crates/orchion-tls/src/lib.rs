//! TLS for Orchion's listeners, on rustls with the `ring` provider.
//!
//! [`ServerTls`] holds the server's certificate (and, for mutual TLS on gRPC, the authority
//! client certificates must chain to), read from PEM files and read again by [`watch`] on
//! SIGHUP or when a file changes; a reload that fails keeps the configuration in use and says
//! why. [`accept`] turns a TCP listener into a [`TlsListener`] of finished handshakes, each
//! with the configuration current when it began, for axum (as an [`axum::serve::Listener`]) and
//! tonic (as a stream). Handshakes run concurrently, at most [`MAX_HANDSHAKES`] at once and each
//! for at most [`HANDSHAKE_TIMEOUT`], so a slow or silent client holds up nobody else.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{net::TcpListener, net::TcpStream, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most handshakes in progress at once on one listener; more connections wait.
pub const MAX_HANDSHAKES: usize = 512;
/// How often [`watch`] looks at the files.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Where the server's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
    /// The authority gRPC clients' certificates must chain to (mutual TLS), PEM.
    pub client_ca: Option<PathBuf>,
}

/// What is wrong with the TLS material, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Unusable(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The certificates of a PEM file: at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "holds no certificate (a PEM `CERTIFICATE` block)",
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        file_error(
            path,
            format!("no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The configurations one reading of the files makes.
struct Configs {
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

fn read_configs(files: &TlsFiles) -> Result<Configs, TlsError> {
    let certs = read_certificates(&files.cert)?;
    let key = read_key(&files.key)?;
    let unusable = |e: rustls::Error| {
        TlsError::Unusable(format!(
            "{} and {} do not make a usable certificate (does the key belong to the certificate?): {e}",
            files.cert.display(),
            files.key.display()
        ))
    };
    let builder = || {
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Unusable(e.to_string()))
    };
    let mut http = builder()?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(unusable)?;
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let grpc = builder()?;
    let mut grpc = match &files.client_ca {
        None => grpc.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(path, format!("not a usable authority: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| file_error(path, e))?;
            grpc.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(certs, key)
    .map_err(unusable)?;
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        http: Arc::new(http),
        grpc: Arc::new(grpc),
    })
}

/// When each file last changed, and its length: a change of either is a change.
fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

/// The server's TLS configuration, kept current with its files.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Configs>,
    seen: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ServerTls {
    /// Reads the files; every problem names its file.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let seen = stamps(&files);
        let current = read_configs(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(current),
            seen: Mutex::new(seen),
        })
    }

    /// Reads the files again; on failure the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps(&self.files);
        let configs = read_configs(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = configs;
        Ok(())
    }

    /// Reads the files again if one changed since they were last read: `None` when none did.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamps(&self.files);
        if *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return None;
        }
        Some(self.reload())
    }

    /// The configuration for the HTTP API: any client, HTTP/2 or HTTP/1.1.
    pub fn http(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .http
            .clone()
    }

    /// The configuration for gRPC: HTTP/2, and a client certificate when `client_ca` is set.
    pub fn grpc(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .grpc
            .clone()
    }
}

/// Reads the TLS files again on SIGHUP and when they change, until `shutdown`.
pub async fn watch(tls: Arc<ServerTls>, shutdown: CancellationToken) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still read again when they change");
            None
        }
    };
    let mut every = tokio::time::interval(CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (outcome, cause) = tokio::select! {
            () = shutdown.cancelled() => return,
            Some(()) = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => (Some(tls.reload()), "SIGHUP"),
            _ = every.tick() => (tls.reload_if_changed(), "a file changed"),
        };
        match outcome {
            None => {}
            Some(Ok(())) => tracing::info!(cause, "TLS certificate read again"),
            Some(Err(e)) => {
                tracing::error!(cause, error = %e, "cannot read the TLS files again; the certificate in use stays")
            }
        }
    }
}

/// Finished TLS handshakes of one listener, with the client's address.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: Option<SocketAddr>,
}

/// Accepts TLS connections on `listener`, each handshake with `config()` as it is when the
/// connection arrives. Stops accepting when the [`TlsListener`] is dropped.
pub fn accept(
    listener: TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + Sync + 'static,
) -> TlsListener {
    let local = listener.local_addr().ok();
    let (sender, accepted) = mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = sender.closed() => return,
                permit = handshakes.clone().acquire_owned() => permit,
            };
            // The semaphore is never closed.
            let Ok(permit) = permit else { return };
            let (tcp, peer) = tokio::select! {
                () = sender.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config());
            let sender = sender.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    TlsListener { accepted, local }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends once this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.local
            .ok_or_else(|| io::Error::other("the listener has no local address"))
    }
}

/// For tonic's `serve_with_incoming`.
impl futures_core::Stream for TlsListener {
    type Item = io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted
            .poll_recv(cx)
            .map(|accepted| accepted.map(|(stream, _)| Ok(stream)))
    }
}

#[cfg(test)]
mod tests;
