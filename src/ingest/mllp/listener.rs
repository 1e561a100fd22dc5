//! The MLLP listener: accepts connections (bounded), decodes frames, begins each message in
//! arrival order and writes ACKs in the same order as their messages become durable, so a
//! pipelining sender gets group commit and correctly ordered ACKs on one connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::codec::{Decoded, MllpDecoder, frame};
use crate::config::MllpSettings;
use crate::ingest::{Ingress, Pending};

/// The frames answering one message: none, one ACK, or an accept ACK then an application ACK.
type AckFuture = Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

/// Accept connections until `shutdown` turns true, then let every connection finish the
/// messages it has begun and wait for them.
pub async fn serve(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    settings: MllpSettings,
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
        connections.spawn(async move {
            if let Err(e) = connection(stream, ingress, &settings, shutdown).await {
                tracing::debug!(%peer, error = %e, "mllp connection ended with an error");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

async fn connection(
    mut stream: TcpStream,
    ingress: Arc<Ingress>,
    settings: &MllpSettings,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut decoder = MllpDecoder::new(settings.max_frame_bytes);
    let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut reading = true;
    let mut deadline = Instant::now() + settings.idle_timeout;
    loop {
        while reading && pending.len() < settings.max_in_flight_per_connection {
            let reply = match decoder.decode() {
                Some(Decoded::Frame(bytes)) => ingress.begin(&bytes).await,
                Some(Decoded::Oversized { prefix, len }) => {
                    ingress.oversized(&prefix, len, settings.max_frame_bytes)
                }
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
        tracing::info!(bytes = decoder.discarded(), "mllp bytes outside frames discarded");
    }
    stream.shutdown().await
}
