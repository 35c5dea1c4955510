//! `https://` targets: a rustls client on each connection. Certificates
//! are not verified (a load generator measures the server, as wrk does);
//! resumption is on by default (tickets or session IDs kept per
//! configuration, shared by the executors) and off with `--no-resume`, so
//! new-connection runs measure full or resumed handshakes.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// What every TLS connection of a run is made with.
#[derive(Clone, Debug)]
pub struct TlsPlan {
    /// The client configuration (and its session store).
    pub config: Arc<ClientConfig>,
    /// The name sent as SNI.
    pub name: ServerName<'static>,
}

impl TlsPlan {
    /// TLS to `host` (SNI), resuming sessions when `resume`.
    pub fn new(host: &str, resume: bool) -> Result<TlsPlan, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = Resumption::disabled();
        }
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
        Ok(TlsPlan {
            config: Arc::new(config),
            name,
        })
    }

    /// A new client connection.
    pub fn connection(&self) -> std::io::Result<ClientConnection> {
        ClientConnection::new(self.config.clone(), self.name.clone()).map_err(std::io::Error::other)
    }
}

/// Hand the bytes in `raw` (read from the socket) to rustls and decrypt,
/// removing from `raw` what rustls took. It stops once decrypted bytes wait
/// to be read: rustls holds at most 16 KiB of them, and a large response
/// read in one go holds more records than that; the rest stays in `raw`
/// for the next call.
pub fn absorb(conn: &mut ClientConnection, raw: &mut Vec<u8>) -> std::io::Result<()> {
    let mut rest: &[u8] = raw;
    while !rest.is_empty() {
        if conn.read_tls(&mut rest)? == 0 {
            break;
        }
        let state = conn.process_new_packets().map_err(std::io::Error::other)?;
        if state.plaintext_bytes_to_read() > 0 {
            break;
        }
    }
    let taken = raw.len() - rest.len();
    raw.drain(..taken);
    Ok(())
}

/// Decrypted bytes into `into`: `Ok(None)` when rustls holds none.
pub fn plaintext(conn: &mut ClientConnection, into: &mut [u8]) -> std::io::Result<Option<usize>> {
    match conn.reader().read(into) {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Encrypt `buf` and return the records to send (with anything else
/// queued: handshake messages).
pub fn seal(conn: &mut ClientConnection, buf: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    if !buf.is_empty() {
        conn.writer().write_all(buf)?;
    }
    while conn.wants_write() {
        conn.write_tls(out)?;
    }
    Ok(())
}

/// Accepts any certificate.
#[derive(Debug)]
struct Unverified;

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
