//! `https://` targets: a rustls client on each connection. Certificates
//! are not verified (a load generator measures the server, as wrk does);
//! resumption is on by default (tickets or session IDs kept per
//! configuration, shared by the executors) and off with `--no-resume`, so
//! new-connection runs measure full or resumed handshakes.
//!
//! rustls's own session store keeps 8 TLS 1.3 tickets per server, and a
//! ticket serves one handshake: with 50 connections opening at once most
//! found none and made a full handshake (a third resumed in a "resumed"
//! run). [`Tickets`] keeps enough for every connection.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::NamedGroup;
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
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if resume {
            Resumption::store(Arc::new(Tickets::default()))
        } else {
            Resumption::disabled()
        };
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

/// Most TLS 1.3 tickets kept: more than connections a run opens at once
/// (each handshake takes one and the server sends more).
const MAX_TICKETS: usize = 4096;

/// The session store of a run: every ticket the server sent, up to
/// [`MAX_TICKETS`], each used once. A run has one target, so the server
/// name is not looked at.
#[derive(Debug, Default)]
pub struct Tickets {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl Tickets {
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        self.kept().kx_hint = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        self.kept().kx_hint
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.kept().tls12 = Some(value);
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.kept().tls12.clone()
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {
        self.kept().tls12 = None;
    }

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        let mut k = self.kept();
        if k.tls13.len() == MAX_TICKETS {
            k.tls13.pop_front();
        }
        k.tls13.push_back(value);
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // The newest: the likeliest to be within the server's key rotation.
        self.kept().tls13.pop_back()
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
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
