//! The MLLP listener: accepts connections (bounded), decodes frames, begins each message in
//! arrival order and writes ACKs in the same order as their messages become durable, so a
//! pipelining sender gets group commit and correctly ordered ACKs on one connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::codec::{Decoded, MllpDecoder, frame};
use crate::config::MllpSettings;

/// A TLS acceptor from PEM files: the certificate chain and its private key.
pub fn tls_acceptor(cert_pem: &std::path::Path, key_pem: &std::path::Path) -> anyhow::Result<TlsAcceptor> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert_pem)
        .with_context(|| format!("reading mllp.tls.cert_file {}", cert_pem.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing mllp.tls.cert_file {}", cert_pem.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .with_context(|| format!("reading mllp.tls.key_file {}", key_pem.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("mllp.tls: certificate and key do not match")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
use crate::ingest::hl7::{Hl7Feed, Pending};

/// The frames answering one message: none, one ACK, or an accept ACK then an application ACK.
type AckFuture = Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

/// Accept connections until `shutdown` turns true, then let every connection finish the
/// messages it has begun and wait for them.
pub async fn serve(
    listener: TcpListener,
    ingress: Arc<Hl7Feed>,
    settings: MllpSettings,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(settings.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&limit).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "mllp accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ingress = Arc::clone(&ingress);
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    // A handshake that stalls must not hold a connection slot forever.
                    match tokio::time::timeout(settings.idle_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, ingress, &settings, shutdown).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake timed out")),
                    }
                }
                None => connection(stream, ingress, &settings, shutdown).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "mllp connection ended with an error");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ingress: Arc<Hl7Feed>,
    settings: &MllpSettings,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut decoder = MllpDecoder::new(settings.max_frame_bytes);
    let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut reading = true;
    let mut deadline = Instant::now() + settings.idle_timeout;
    loop {
        while reading && pending.len() < settings.max_in_flight_per_connection {
            let reply = match decoder.decode() {
                Some(Decoded::Frame(bytes)) => ingress.begin(&bytes).await,
                Some(Decoded::Oversized { prefix, len }) => ingress.oversized(&prefix, len, settings.max_frame_bytes),
                None => break,
            };
            pending.push_back(match reply {
                Pending::Ready(ack) => Box::pin(std::future::ready(ack)),
                durable => Box::pin(durable.finish()),
            });
        }
        if !reading && pending.is_empty() {
            break;
        }
        let can_read = reading && pending.len() < settings.max_in_flight_per_connection;
        tokio::select! {
            Some(acks) = pending.next(), if !pending.is_empty() => {
                for ack in acks {
                    stream.write_all(&frame(ack.as_bytes())).await?;
                }
                deadline = Instant::now() + settings.idle_timeout;
            }
            read = stream.read(&mut buf), if can_read => {
                match read? {
                    0 => reading = false,
                    n => {
                        decoder.extend(&buf[..n]);
                        deadline = Instant::now() + settings.idle_timeout;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline), if pending.is_empty() => {
                tracing::debug!("mllp connection idle, closing");
                break;
            }
            _ = shutdown.changed(), if reading => {
                // Stop taking new messages; the ones begun are answered before we close.
                reading = false;
            }
        }
    }
    if decoder.discarded() > 0 {
        ingress.ingress().metrics.discarded_bytes.fetch_add(decoder.discarded(), std::sync::atomic::Ordering::Relaxed);
        tracing::info!(bytes = decoder.discarded(), "mllp bytes outside frames discarded");
    }
    stream.shutdown().await
}
