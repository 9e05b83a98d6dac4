//! TLS for the gRPC front (rustls, ring): the server's certificate chain and key, and with
//! a client CA, mutual TLS (a client certificate signed by that CA is required). The files
//! can be read again at any time (`reload`); each new connection takes the configuration
//! current when it arrives, so open connections keep theirs and nothing is dropped.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates a client's certificate must chain to; None: no client certificate.
    pub client_ca: Option<PathBuf>,
}

/// The TLS configuration new connections use.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    pub fn load(files: TlsFiles) -> io::Result<Tls> {
        let acceptor = acceptor(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(acceptor),
        })
    }

    /// Reads the files again; on any error the configuration in use stays.
    pub fn reload(&self) -> io::Result<()> {
        let acceptor = acceptor(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = acceptor;
        Ok(())
    }

    /// The acceptor for a connection arriving now.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn invalid(path: &Path, problem: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {problem}", path.display()),
    )
}

fn certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, e))?;
    if certificates.is_empty() {
        return Err(invalid(path, "no PEM certificate in the file"));
    }
    Ok(certificates)
}

fn acceptor(files: &TlsFiles) -> io::Result<TlsAcceptor> {
    let provider = Arc::new(ring::default_provider());
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| invalid(&files.key, e))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path)? {
                roots.add(certificate).map_err(|e| invalid(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::<CryptoProvider>::clone(&provider),
            )
            .build()
            .map_err(|e| invalid(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&files.key, e))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
