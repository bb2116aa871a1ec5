//! TLS on the listener (`--tls-cert`, `--tls-key`): rustls, offering HTTP/2 and HTTP/1.1 by
//! ALPN. The certificate is read again on SIGHUP and when its files change (checked every
//! `FILE_POLL`), so a renewal needs no restart: connections keep the session they have, and
//! the next handshake gets the new certificate. A certificate that does not load is logged
//! and the one in use kept.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use actix_web::rt::net::TcpStream;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::http::Conn;

/// How long a client may take to complete its handshake (actix-tls allows 3 s, nginx 60 s).
const HANDSHAKE: Duration = Duration::from_secs(10);

/// How often the files are checked for a change.
const FILE_POLL: Duration = Duration::from_secs(10);

/// ALPN protocol id of HTTP/2.
const H2: &[u8] = b"h2";

/// The PEM files of `--tls-cert` and `--tls-key`.
#[derive(Debug, Clone)]
pub struct Files {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate did not load.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct LoadError {
    path: String,
    reason: String,
}

/// What the listener accepts connections with; cheap to clone.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    certificate: Arc<Certificate>,
}

impl Tls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(files: Files) -> Result<Self, LoadError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = load(&files, &provider)?;
        let certificate = Arc::new(Certificate {
            seen: RwLock::new(seen(&files)),
            files,
            provider: provider.clone(),
            current: RwLock::new(Arc::new(key)),
        });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![H2.to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    /// The handshake; `None` if it fails or takes longer than `HANDSHAKE`.
    pub async fn accept(&self, io: TcpStream) -> Option<Conn> {
        match tokio::time::timeout(HANDSHAKE, self.acceptor.accept(io)).await {
            Ok(Ok(io)) => Some(Conn::Tls(Box::new(io))),
            Ok(Err(e)) => {
                log::debug!("TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                log::debug!("TLS handshake timed out");
                None
            }
        }
    }

    /// Reads the files again on SIGHUP and when they change, until the server stops.
    pub async fn keep_current(self) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(e) => {
                log::warn!("cannot watch SIGHUP ({e}); the certificate is read again when its files change");
                None
            }
        };
        let mut poll = tokio::time::interval(FILE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                _ = poll.tick() => false,
            };
            self.certificate.reload(asked);
        }
    }
}

/// Whether a connection agreed on HTTP/2 in its handshake.
pub fn is_h2(io: &Conn) -> bool {
    match io {
        Conn::Tls(io) => io.get_ref().1.alpn_protocol() == Some(H2),
        Conn::Plain(_) => false,
    }
}

/// The certificate handshakes get, replaced when the files change.
#[derive(Debug)]
struct Certificate {
    files: Files,
    provider: Arc<CryptoProvider>,
    /// The files' modification times and sizes when last read.
    seen: RwLock<Seen>,
    current: RwLock<Arc<CertifiedKey>>,
}

type Seen = [Option<(SystemTime, u64)>; 2];

impl Certificate {
    /// Reads the files again if `asked`, or if they changed since they were last read.
    fn reload(&self, asked: bool) {
        let now = seen(&self.files);
        if !asked && *self.seen.read().expect("not poisoned") == now {
            return;
        }
        *self.seen.write().expect("not poisoned") = now;
        match load(&self.files, &self.provider) {
            Ok(key) => {
                *self.current.write().expect("not poisoned") = Arc::new(key);
                log::info!(
                    "TLS certificate read again from {}",
                    self.files.cert.display()
                );
            }
            Err(e) => log::warn!("TLS certificate kept, the new one does not load: {e}"),
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").clone())
    }
}

fn seen(files: &Files) -> Seen {
    [&files.cert, &files.key].map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
}

/// The chain and key of `files`, checked to belong together.
fn load(files: &Files, provider: &CryptoProvider) -> Result<CertifiedKey, LoadError> {
    let failed = |path: &Path, reason: String| LoadError {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| failed(&files.cert, pem_error(e)))?;
    if chain.is_empty() {
        return Err(failed(&files.cert, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| failed(&files.key, pem_error(e)))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| failed(&files.key, e.to_string()))
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) if e.kind() == io::ErrorKind::NotFound => {
            "no such file".into()
        }
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a new self-signed certificate and its key over `files`; the certificate, DER.
    fn write_new(files: &Files) -> Vec<u8> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&files.cert, made.cert.pem()).unwrap();
        std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
        made.cert.der().to_vec()
    }

    fn served(tls: &Tls) -> Vec<u8> {
        let current = tls.certificate.current.read().unwrap().clone();
        current.end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_leaves_the_certificate_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
        };
        let first = write_new(&files);
        let tls = Tls::load(files.clone()).unwrap();
        assert_eq!(served(&tls), first);

        // Unchanged files are not read again; changed ones are, without being asked.
        tls.certificate.reload(false);
        assert_eq!(served(&tls), first);
        let second = write_new(&files);
        tls.certificate.reload(false);
        assert_eq!(served(&tls), second);

        // A key that is not the certificate's, or no file at all: the one in use stays.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&files.key, other.serialize_pem()).unwrap();
        tls.certificate.reload(true);
        assert_eq!(served(&tls), second);
        std::fs::remove_file(&files.cert).unwrap();
        tls.certificate.reload(true);
        assert_eq!(served(&tls), second);
        let error = Tls::load(files.clone()).err().unwrap().to_string();
        assert!(error.contains("cert.pem: no such file"), "{error}");
    }
}
