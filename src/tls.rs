//! TLS for both APIs, with rustls (ring as its crypto provider).
//!
//! A manager or worker serves HTTPS when given a certificate and key (`--tls-cert`,
//! `--tls-key`). With `--tls-ca`, a worker requires its callers to present a client certificate
//! signed by that CA (mutual TLS: only the manager gets in), and a manager calls its workers
//! over HTTPS, trusting that CA for their certificates and presenting its own as a client
//! certificate. `cube up --tls` makes a CA and the certificates for a local cluster
//! ([`LocalPki::generate`]), as Swarm does for its nodes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate (chain) and key an API serves with, and the CA it trusts for its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Workers: callers must present a certificate signed by it. Manager: workers' certificates
    /// are checked against it.
    pub ca: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate; expected PEM \"BEGIN CERTIFICATE\" blocks",
            path.display()
        ));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        format!(
            "cannot read a private key from {}: {e}; expected a PEM key (PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca)? {
        roots
            .add(cert)
            .map_err(|e| format!("{} is not a usable CA certificate: {e}", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// What an API serves with. `require_client_cert`: callers must present a certificate signed
/// by `files.ca`.
pub fn server_config(
    files: &TlsFiles,
    require_client_cert: bool,
) -> Result<rustls::ServerConfig, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&files.ca, require_client_cert) {
        (Some(ca), true) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
                .build()
                .map_err(|e| format!("cannot verify clients against {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate and key: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a client connects with: trusting `ca` (the only roots: Cube's peers are its own), and
/// presenting `identity` (certificate, key) when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let mut config = match identity {
        Some((cert, key_path)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .map_err(|e| format!("{} is not a usable client certificate: {e}", cert.display()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A CA and certificates for a local cluster, as `cube up --tls` makes them.
#[derive(Debug, Clone)]
pub struct LocalPki {
    /// The CA certificate: what clients and the manager trust.
    pub ca: PathBuf,
    dir: PathBuf,
}

impl LocalPki {
    /// Make a CA in `dir` and a certificate for each of `names` (the manager and the workers),
    /// valid for `hosts` (names or IP addresses), usable as server and client certificates.
    /// Keys are written owner-only.
    pub fn generate(dir: &Path, names: &[&str], hosts: &[String]) -> Result<LocalPki, String> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let err = |e: rcgen::Error| format!("cannot make the cluster's certificates: {e}");
        crate::fsutil::private_dir(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Cube local cluster CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(err)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let pki = LocalPki {
            ca: dir.join("ca.pem"),
            dir: dir.to_path_buf(),
        };
        write(&pki.ca, &ca_cert.pem(), false)?;
        for name in names {
            let mut params = CertificateParams::new(hosts.to_vec()).map_err(err)?;
            params.distinguished_name.push(DnType::CommonName, *name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().map_err(err)?;
            let cert = params.signed_by(&key, &issuer).map_err(err)?;
            let files = pki.files(name);
            write(&files.cert, &cert.pem(), false)?;
            write(&files.key, &key.serialize_pem(), true)?;
        }
        Ok(pki)
    }

    /// The files of `name`'s certificate, with the CA.
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
            ca: Some(self.ca.clone()),
        }
    }
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    let res = if secret {
        crate::fsutil::write_private(path, text)
    } else {
        std::fs::write(path, text)
    };
    res.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_pki_gives_configs_that_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = LocalPki::generate(
            dir.path(),
            &["manager", "w1"],
            &["127.0.0.1".into(), "localhost".into()],
        )
        .expect("certificates");
        let files = pki.files("w1");
        server_config(&files, true).expect("a worker's mutual-TLS config");
        server_config(&pki.files("manager"), false).expect("a manager's config");
        let m = pki.files("manager");
        client_config(&pki.ca, Some((&m.cert, &m.key))).expect("a client config");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are owner-only");
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").expect("write");
        let files = TlsFiles {
            cert: junk.clone(),
            key: junk.clone(),
            ca: None,
        };
        let e = server_config(&files, false).unwrap_err();
        assert!(e.contains("junk.pem"), "{e}");
        let e = server_config(
            &TlsFiles {
                cert: dir.path().join("missing.pem"),
                ..files
            },
            false,
        )
        .unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
