//! Certificates for TLS tests: an authority of one's own, and the certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority made for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    /// The authority's certificate, PEM.
    pub cert_pem: String,
}

/// A certificate the authority signed, with its key, written to files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new authority named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("a key");
        let cert = params.self_signed(&key).expect("a self-signed authority");
        TestCa {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    /// Writes the authority's certificate to `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.cert_pem).expect("the CA file is written");
        path.to_owned()
    }

    /// A server certificate for `names` (`localhost`, `127.0.0.1`), written as `<stem>.crt` and
    /// `<stem>.key` in `dir`.
    pub fn server(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        self.issue(dir, stem, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate named `name`, written as `<stem>.crt` and `<stem>.key` in `dir`.
    pub fn client(&self, dir: &Path, stem: &str, name: &str) -> Issued {
        self.issue(dir, stem, &[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed certificate");
        let issued = Issued {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("the certificate is written");
        std::fs::write(&issued.key, key.serialize_pem()).expect("the key is written");
        issued
    }
}
