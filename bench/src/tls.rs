//! Scenario 14 (HTTPS): a throwaway certificate made with `openssl` at bench time in a temp
//! dir (nothing is checked in), served by both peers, and the load generator's TLS client
//! (rustls, trusting only that certificate's CA).
//!
//! The certificate is a leaf for `localhost` and 127.0.0.1 (ECDSA P-256) signed by a CA made
//! in the same dir: webpki refuses a self-signed CA certificate as the server's own, so the
//! client trusts the CA and the servers present the leaf. The client offers ALPN `http/1.1`
//! only: the hand-rolled HTTP client speaks no HTTP/2, and both servers offer h2 and
//! http/1.1, so both answer in HTTP/1.1 over TLS 1.3.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The server name the certificate is made for and the client asks for.
const NAME: &str = "localhost";

/// The certificate files, removed with the temp dir when dropped.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// The leaf certificate (PEM), served by both peers.
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// Its private key (PKCS#8 PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Makes a CA and a leaf signed by it with `openssl`, in a fresh temp dir.
    pub fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-tls-")
            .tempdir()
            .context("cannot create a temp dir for the certificate")?;
        let d = dir.path();
        std::fs::write(
            d.join("leaf.ext"),
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            d,
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ],
            &["-days", "2", "-subj", "/CN=herald-bench CA"],
        )?;
        openssl(
            d,
            &[
                &["req"],
                &ec[..],
                &["-keyout", "key.pem", "-out", "leaf.csr"],
            ],
            &["-subj", "/CN=localhost"],
        )?;
        openssl(
            d,
            &[&[
                "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            ]],
            &[
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
                "-out",
                "cert.pem",
            ],
        )?;
        Ok(Self { dir })
    }

    /// The client side: rustls trusting the CA, ALPN `http/1.1`.
    pub fn client(&self) -> anyhow::Result<Tls> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.ca())? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(NAME)?,
            negotiated: Arc::default(),
        })
    }
}

fn openssl(dir: &Path, parts: &[&[&str]], rest: &[&str]) -> anyhow::Result<()> {
    let args: Vec<&str> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let out = Command::new("openssl")
        .args(&args)
        .args(rest)
        .current_dir(dir)
        .output()
        .context("cannot run openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The load generator's TLS client; cheap to clone.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
    /// Protocol version, cipher suite and ALPN of the first handshake, for the report.
    negotiated: Arc<OnceLock<String>>,
}

impl Tls {
    /// The handshake over a connected socket; fails unless the server offered HTTP/1.1.
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        let stream = self.connector.connect(self.name.clone(), tcp).await?;
        let alpn = stream.get_ref().1.alpn_protocol();
        if alpn.is_some_and(|p| p != b"http/1.1") {
            return Err(io::Error::other(format!(
                "ALPN chose {:?}, not http/1.1",
                String::from_utf8_lossy(alpn.unwrap_or_default())
            )));
        }
        self.negotiated.get_or_init(|| {
            let conn = stream.get_ref().1;
            let version = conn.protocol_version();
            let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
            format!(
                "{}, {}, ALPN {}",
                version.map_or("?".into(), |v| format!("{v:?}")),
                suite.map_or("?".into(), |s| format!("{s:?}")),
                alpn.map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned())
            )
        });
        Ok(stream)
    }

    /// What the first handshake negotiated (version, cipher suite, ALPN), once one is done.
    pub fn negotiated(&self) -> Option<&str> {
        self.negotiated.get().map(String::as_str)
    }
}
