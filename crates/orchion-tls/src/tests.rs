#![allow(clippy::unwrap_used, clippy::expect_used)]

use orchion_testkit::tls::TestCa;
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::*;

fn files(dir: &Path, ca: &TestCa, client_ca: Option<PathBuf>) -> TlsFiles {
    let issued = ca.server(dir, "server", &["localhost", "127.0.0.1"]);
    TlsFiles {
        cert: issued.cert,
        key: issued.key,
        client_ca,
    }
}

fn client(trusting: &TestCa, identity: Option<(&Path, &Path)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trusting.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certificates(cert).unwrap(), read_key(key).unwrap())
            .unwrap(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Serves `config` on a loopback port, echoing one message per connection.
async fn echo_server(config: impl Fn() -> Arc<ServerConfig> + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut tls = accept(listener, config);
    let addr = axum::serve::Listener::local_addr(&tls).unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = axum::serve::Listener::accept(&mut tls).await;
            tokio::spawn(async move {
                let mut buf = [0u8; 5];
                if stream.read_exact(&mut buf).await.is_ok() {
                    let _ = stream.write_all(&buf).await;
                }
            });
        }
    });
    addr
}

async fn exchange(addr: SocketAddr, connector: &TlsConnector) -> Result<Vec<u8>, io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    stream.write_all(b"hello").await?;
    let mut buf = vec![0u8; 5];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn clients_trusting_the_authority_connect_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test ca");
    let tls = Arc::new(ServerTls::load(files(dir.path(), &ca, None)).unwrap());
    let addr = echo_server({
        let tls = tls.clone();
        move || tls.http()
    })
    .await;
    assert_eq!(exchange(addr, &client(&ca, None)).await.unwrap(), b"hello");
    let stranger = TestCa::new("another ca");
    let err = exchange(addr, &client(&stranger, None)).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_silent_client_holds_up_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test ca");
    let tls = Arc::new(ServerTls::load(files(dir.path(), &ca, None)).unwrap());
    let addr = echo_server(move || tls.http()).await;
    // Connections that never start their handshake.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let answered = tokio::time::timeout(Duration::from_secs(5), exchange(addr, &client(&ca, None)))
        .await
        .expect("answered while others stay silent");
    assert_eq!(answered.unwrap(), b"hello");
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_the_authority_signed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test ca");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let tls = Arc::new(ServerTls::load(files(dir.path(), &ca, Some(ca_file))).unwrap());
    let addr = echo_server({
        let tls = tls.clone();
        move || tls.grpc()
    })
    .await;
    let agent = ca.client(dir.path(), "agent", "agent-1");
    let with_cert = client(&ca, Some((&agent.cert, &agent.key)));
    assert_eq!(exchange(addr, &with_cert).await.unwrap(), b"hello");
    // TLS 1.3 reports a refused client certificate after the handshake: on first use.
    assert!(exchange(addr, &client(&ca, None)).await.is_err());
    let stranger = TestCa::new("another ca");
    let foreign = stranger.client(dir.path(), "foreign", "agent-2");
    assert!(
        exchange(addr, &client(&ca, Some((&foreign.cert, &foreign.key))))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_changed_certificate_is_served_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let old = TestCa::new("old ca");
    let files = files(dir.path(), &old, None);
    let tls = Arc::new(ServerTls::load(files.clone()).unwrap());
    let addr = echo_server({
        let tls = tls.clone();
        move || tls.http()
    })
    .await;
    assert!(tls.reload_if_changed().is_none(), "nothing changed");

    let new = TestCa::new("new ca");
    new.server(dir.path(), "server", &["localhost"]);
    tls.reload_if_changed()
        .expect("the change is seen")
        .unwrap();
    assert_eq!(exchange(addr, &client(&new, None)).await.unwrap(), b"hello");
    assert!(exchange(addr, &client(&old, None)).await.is_err());

    // A key that is not the certificate's (as while a rotation is half written): refused,
    // naming both files, and the certificate in use stays.
    let other = new.server(dir.path(), "other", &["localhost"]);
    std::fs::copy(&other.key, &files.key).unwrap();
    let err = tls.reload().unwrap_err().to_string();
    assert!(
        err.contains("server.crt") && err.contains("server.key"),
        "{err}"
    );
    assert_eq!(exchange(addr, &client(&new, None)).await.unwrap(), b"hello");
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test ca");
    let good = files(dir.path(), &ca, None);
    let missing = TlsFiles {
        cert: dir.path().join("absent.crt"),
        ..good.clone()
    };
    let err = ServerTls::load(missing).err().unwrap().to_string();
    assert!(err.contains("absent.crt"), "{err}");
    let not_pem = dir.path().join("junk.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let junk = TlsFiles {
        cert: not_pem.clone(),
        ..good.clone()
    };
    let err = ServerTls::load(junk).err().unwrap().to_string();
    assert!(
        err.contains("junk.pem") && err.contains("no certificate"),
        "{err}"
    );
    let no_key = TlsFiles {
        key: not_pem,
        ..good
    };
    let err = ServerTls::load(no_key).err().unwrap().to_string();
    assert!(
        err.contains("junk.pem") && err.contains("private key"),
        "{err}"
    );
}
