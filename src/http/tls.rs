//! The server side of TLS: a PEM certificate chain and key into a rustls config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or parsed.
    #[error("server.tls_cert {path}: {error}")]
    Cert {
        /// The file at fault.
        path: PathBuf,
        /// What the PEM reader said.
        error: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("server.tls_cert {0}: no certificate found")]
    NoCert(PathBuf),
    /// The key file could not be read or holds no private key.
    #[error("server.tls_key {path}: no private key read ({error})")]
    Key {
        /// The file at fault.
        path: PathBuf,
        /// What the PEM reader said.
        error: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair (usually: the key does not match the certificate).
    #[error("server.tls_cert / server.tls_key: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads a PEM certificate chain and private key into a rustls server config (ring
/// provider, ALPN h2 and http/1.1).
///
/// # Errors
/// Unreadable files, no certificate, no key, or a key that does not match.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| TlsError::Cert {
            path: cert.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Key {
        path: key.to_owned(),
        error,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
