//! The MLLP listener: accepts connections (bounded), decodes frames, begins each message in
//! arrival order and writes ACKs in the same order as their messages become durable, so a
//! pipelining sender gets group commit and correctly ordered ACKs on one connection.
//!
//! Nobody on the network is authenticated here, so every resource a peer can hold is bounded in
//! count and in time: connection slots (in total and per peer address, see [`super::slots`]), a
//! connection's time to its first frame, a frame's time from its first byte, an ACK's time to
//! be written. Accept errors (a full file table) back off and are logged once per interval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::codec::{Decoded, MllpDecoder, frame_into};
use super::slots::{Admission, Slot, Slots};
use crate::config::MllpSettings;
use crate::http::metrics::Stages;

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
use crate::accept::AcceptErrors;
use crate::ingest::hl7::{Hl7Feed, Pending};

/// The frames answering one message: none, one ACK, or an accept ACK then an application ACK.
type AckFuture = Pin<Box<dyn Future<Output = Vec<String>> + Send>>;

/// What the listener refused or cut short, for `/metrics` and the periodic summary line.
#[derive(Debug, Default)]
pub struct ListenerMetrics {
    /// Connections closed at once: every slot held by a connection that has completed a frame,
    /// or the peer address at its cap.
    pub refused: AtomicU64,
    /// Connections that had not completed a frame, closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Connections closed for not completing their first frame in time.
    pub first_frame_timeouts: AtomicU64,
    /// Connections closed for a frame that took too long (slow drip).
    pub frame_timeouts: AtomicU64,
    /// Connections closed because the peer did not read its ACKs.
    pub write_timeouts: AtomicU64,
    /// Failed accepts (for instance at the file-descriptor limit).
    pub accept_errors: AtomicU64,
    /// Connections closed at once because their address opened too many too fast.
    pub rate_limited: AtomicU64,
}

impl ListenerMetrics {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 6] {
        [
            self.refused.load(Ordering::Relaxed),
            self.evicted.load(Ordering::Relaxed),
            self.first_frame_timeouts.load(Ordering::Relaxed),
            self.frame_timeouts.load(Ordering::Relaxed),
            self.write_timeouts.load(Ordering::Relaxed),
            self.rate_limited.load(Ordering::Relaxed),
        ]
    }
}

/// How often refusals, evictions and timeouts are summed up in one log line, at most.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// Accept connections until `shutdown` is cancelled, then close the listening socket (a new
/// connection is refused), let every connection finish the messages it has begun and wait
/// for them.
pub async fn serve(
    listener: TcpListener,
    ingress: Arc<Hl7Feed>,
    settings: MllpSettings,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    serve_with_metrics(listener, ingress, settings, tls, shutdown, Arc::default()).await
}

/// [`serve`], counting refusals and timeouts into `metrics`.
pub async fn serve_with_metrics(
    listener: TcpListener,
    ingress: Arc<Hl7Feed>,
    settings: MllpSettings,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    metrics: Arc<ListenerMetrics>,
) {
    let slots = Arc::new(Slots::new(settings.max_connections, settings.max_connections_per_peer));
    let rate = super::rate::ConnectRate::new(
        settings.connects_per_peer_per_sec,
        settings.connect_burst_per_peer,
        super::rate::MAX_PEERS_TRACKED,
    );
    let mut connections = JoinSet::new();
    let mut errors = AcceptErrors::new("mllp");
    let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut summarised = metrics.snapshot();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = summary.tick() => {
                errors.flush(true);
                summarised = log_summary(&metrics, summarised);
                continue;
            }
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                errors.succeeded();
                pair
            }
            Err(e) => {
                ListenerMetrics::bump(&metrics.accept_errors);
                if let Some(pause) = errors.failed(&e) {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                continue;
            }
        };
        if !rate.allow(peer.ip(), std::time::Instant::now()) {
            ListenerMetrics::bump(&metrics.rate_limited);
            drop(stream);
            continue;
        }
        let (slot, evicted) = match slots.admit(peer.ip()) {
            Admission::Admitted { slot, evicted } => (slot, evicted),
            Admission::Refused => {
                ListenerMetrics::bump(&metrics.refused);
                drop(stream);
                continue;
            }
        };
        if evicted {
            ListenerMetrics::bump(&metrics.evicted);
        }
        let _ = stream.set_nodelay(true);
        let ingress = Arc::clone(&ingress);
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let metrics = Arc::clone(&metrics);
        connections.spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    // A handshake that stalls must not hold a connection slot: it has the time
                    // of a first frame, and yields its slot like any connection without one.
                    let handshake = tokio::time::timeout(settings.first_frame_timeout, acceptor.accept(stream));
                    tokio::select! {
                        done = handshake => match done {
                            Ok(Ok(stream)) => connection(stream, ingress, &settings, shutdown, slot, &metrics).await,
                            Ok(Err(e)) => Err(e),
                            Err(_) => {
                                ListenerMetrics::bump(&metrics.first_frame_timeouts);
                                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake timed out"))
                            }
                        },
                        _ = slot.evicted() => Ok(()),
                    }
                }
                None => connection(stream, ingress, &settings, shutdown, slot, &metrics).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "mllp connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    // Closed at once: a new connection is refused, not left waiting in the backlog.
    drop(listener);
    errors.flush(true);
    while connections.join_next().await.is_some() {}
    log_summary(&metrics, summarised);
}

/// One line for everything refused or cut short since the last line, if anything was.
fn log_summary(metrics: &ListenerMetrics, before: [u64; 6]) -> [u64; 6] {
    let now = metrics.snapshot();
    if now != before {
        let d = |i: usize| now[i] - before[i];
        tracing::info!(
            refused = d(0),
            evicted = d(1),
            first_frame_timeouts = d(2),
            frame_timeouts = d(3),
            write_timeouts = d(4),
            rate_limited = d(5),
            "mllp connections refused or closed early"
        );
    }
    now
}

/// Why a connection's clock ran out.
#[derive(Clone, Copy, Debug)]
enum Deadline {
    FirstFrame,
    Frame,
    Idle,
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ingress: Arc<Hl7Feed>,
    settings: &MllpSettings,
    shutdown: CancellationToken,
    slot: Slot,
    metrics: &ListenerMetrics,
) -> std::io::Result<()> {
    let mut decoder = MllpDecoder::new(settings.max_frame_bytes);
    let mut pending: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut reading = true;
    let opened = Instant::now();
    // Last completed frame or written ACK: what the idle timeout counts from. Bytes outside
    // frames do not count, so a peer dripping noise does not keep its connection.
    let mut active = opened;
    // First byte of the frame under way, and bytes received since.
    let mut frame_started: Option<(Instant, u64)> = None;
    // Whether a frame has been completed (else the first-frame clock runs).
    let mut framed = false;
    // Since when the connection has not read because its pipeline is full.
    let mut stalled_since: Option<Instant> = None;
    // The message whose beginning waits (admission): the next one begins after it.
    let mut beginning: Option<BeginFuture> = None;
    loop {
        let mut decoded_any = false;
        // Messages begin one at a time, in arrival order, while the pipeline has room. Most
        // begin at once; one that must wait (for an ingest permit, the store's queue, the store
        // itself) waits in the select below, so the ACKs already due are written meanwhile: a
        // waiting connection is slowed, it does not fall silent.
        while beginning.is_none() && reading && pending.len() < settings.max_in_flight_per_connection {
            let decoding = std::time::Instant::now();
            let reply = match decoder.decode() {
                Some(Decoded::Frame(bytes)) => {
                    Stages::since(&ingress.ingress().stages.decode, decoding);
                    let ingress = Arc::clone(&ingress);
                    let mut begin: BeginFuture = Box::pin(async move { ingress.begin(&bytes).await });
                    match std::future::poll_fn(|cx| std::task::Poll::Ready(begin.as_mut().poll(cx))).await {
                        std::task::Poll::Ready(reply) => reply,
                        std::task::Poll::Pending => {
                            decoded_any = true;
                            beginning = Some(begin);
                            break;
                        }
                    }
                }
                Some(Decoded::Oversized { prefix, len }) => ingress.oversized(&prefix, len, settings.max_frame_bytes),
                None => break,
            };
            decoded_any = true;
            pending.push_back(ack_future(reply));
        }
        let now = Instant::now();
        if decoded_any {
            active = now;
            framed = true;
            slot.frame_completed();
        }
        if !decoder.in_frame() {
            frame_started = None;
        } else if decoded_any {
            // The rest of the buffer is the next frame's start: its clock starts now.
            frame_started = Some((now, 0));
        }
        let idle = pending.is_empty() && beginning.is_none();
        if !reading && idle {
            break;
        }
        let can_read = reading && beginning.is_none() && pending.len() < settings.max_in_flight_per_connection;
        hold_frame_clock(&mut frame_started, &mut stalled_since, reading, can_read, Instant::now());
        let deadline = next_deadline(settings, framed, opened, active, frame_started, can_read, idle);
        tokio::select! {
            reply = begun(&mut beginning) => {
                beginning = None;
                pending.push_back(ack_future(reply));
            }
            Some(acks) = pending.next(), if !pending.is_empty() => {
                // One commit answers many messages at once: the ACKs of the later messages
                // already decided go out in the same write, in order (at most
                // `max_in_flight_per_connection` messages' ACKs), one system call instead of one
                // each.
                let mut out = Vec::new();
                let mut frames = 0;
                let mut next = Some(acks);
                while let Some(acks) = next.take() {
                    for ack in acks {
                        if accepts(&ack) {
                            // A sender that delivers messages keeps its slot when newcomers crowd in.
                            slot.prove();
                        }
                        frame_into(&mut out, ack.as_bytes());
                        frames += 1;
                    }
                    next = pending.next().now_or_never().flatten();
                }
                let writing = std::time::Instant::now();
                match tokio::time::timeout(settings.frame_timeout, stream.write_all(&out)).await {
                    Ok(written) => {
                        written?;
                        // Each ACK took the write that carried it.
                        let took = writing.elapsed();
                        for _ in 0..frames {
                            ingress.ingress().stages.ack_write.record(took);
                        }
                    }
                    Err(_) => {
                        // A peer that does not read its ACKs keeps no slot.
                        ListenerMetrics::bump(&metrics.write_timeouts);
                        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "ack write timed out"));
                    }
                }
                active = Instant::now();
            }
            read = stream.read(&mut buf), if can_read => {
                match read {
                    Ok(0) => reading = false,
                    Ok(n) => {
                        decoder.extend(&buf[..n]);
                        let started = frame_started.get_or_insert((Instant::now(), 0));
                        started.1 += n as u64;
                    }
                    Err(e) => return Err(e),
                }
            }
            _ = sleep_until_some(deadline) => {
                let why = deadline.map(|(_, why)| why);
                match why {
                    Some(Deadline::FirstFrame) => ListenerMetrics::bump(&metrics.first_frame_timeouts),
                    Some(Deadline::Frame) => ListenerMetrics::bump(&metrics.frame_timeouts),
                    Some(Deadline::Idle) | None => {}
                }
                tracing::debug!(?why, "mllp connection timed out, closing");
                if idle {
                    break;
                }
                // Messages already begun are still answered.
                reading = false;
            }
            _ = slot.evicted(), if reading => {
                // Room for a newcomer: this connection never completed a frame.
                reading = false;
            }
            () = shutdown.cancelled(), if reading => {
                // Stop taking new messages; the ones begun are answered before we close.
                reading = false;
            }
        }
    }
    if decoder.discarded() > 0 {
        ingress.ingress().metrics.discarded_bytes.fetch_add(decoder.discarded(), Ordering::Relaxed);
        // Counted on /metrics; a line per connection would let any peer write logs at will.
        tracing::debug!(bytes = decoder.discarded(), "mllp bytes outside frames discarded");
    }
    drop(slot);
    // A peer that does not read must not hold the socket open through a blocked shutdown.
    tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await.unwrap_or(Ok(()))
}

/// A message being begun ([`Hl7Feed::begin`]), owned so that it can wait in a select.
type BeginFuture = Pin<Box<dyn Future<Output = Pending> + Send>>;

/// The reply of the message being begun, once it has begun; never, when none is.
async fn begun(beginning: &mut Option<BeginFuture>) -> Pending {
    match beginning {
        Some(begin) => begin.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The ACK frames of a begun message, now or once it is durable.
fn ack_future(reply: Pending) -> AckFuture {
    match reply {
        Pending::Ready(ack) => Box::pin(std::future::ready(ack)),
        durable => Box::pin(durable.finish()),
    }
}

/// Whether an ACK accepts its message (MSA-1 `AA` or `CA`).
fn accepts(ack: &str) -> bool {
    ack.split(['\r', '\n']).any(|segment| {
        let Some(rest) = segment.strip_prefix("MSA") else { return false };
        let mut chars = rest.chars();
        let Some(separator) = chars.next() else { return false };
        matches!(chars.as_str().split(separator).next(), Some("AA" | "CA"))
    })
}

/// While a connection does not read because its pipeline is full, the server is the slow side:
/// the clock of the frame under way stands still, and resumes where it stood once the
/// connection reads again. Without this, a pipelining sender whose ACKs waited longer than
/// `frame_timeout` for commits (overload) had its connection closed for the partial frame
/// left in the buffer, mid-pipeline, with the rest of its messages unanswered.
fn hold_frame_clock(
    frame_started: &mut Option<(Instant, u64)>,
    stalled_since: &mut Option<Instant>,
    reading: bool,
    can_read: bool,
    now: Instant,
) {
    match (*stalled_since, can_read) {
        (None, false) if reading => *stalled_since = Some(now),
        (Some(since), true) => {
            if let Some((started, _)) = frame_started.as_mut() {
                *started += now.saturating_duration_since(since);
            }
            *stalled_since = None;
        }
        _ => {}
    }
}

/// The earliest clock that applies now, and which it is.
fn next_deadline(
    settings: &MllpSettings,
    framed: bool,
    opened: Instant,
    active: Instant,
    frame_started: Option<(Instant, u64)>,
    can_read: bool,
    nothing_pending: bool,
) -> Option<(Instant, Deadline)> {
    let mut clocks: Vec<(Instant, Deadline)> = Vec::with_capacity(3);
    if !framed && can_read {
        clocks.push((opened + settings.first_frame_timeout, Deadline::FirstFrame));
    }
    if let Some((started, bytes)) = frame_started.filter(|_| can_read) {
        // A frame gets `frame_timeout`, or longer if it keeps the minimum average rate.
        let at_rate = Duration::from_secs(bytes / settings.min_frame_bytes_per_sec);
        clocks.push((started + settings.frame_timeout.max(at_rate), Deadline::Frame));
    }
    if nothing_pending && frame_started.is_none() {
        clocks.push((active + settings.idle_timeout, Deadline::Idle));
    }
    clocks.into_iter().min_by_key(|(at, _)| *at)
}

async fn sleep_until_some(deadline: Option<(Instant, Deadline)>) {
    match deadline {
        Some((at, _)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MllpSettings {
        MllpSettings {
            max_frame_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(300),
            max_connections: 16,
            max_connections_per_peer: 16,
            first_frame_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(30),
            min_frame_bytes_per_sec: 4096,
            reserved_fds: 0,
            max_in_flight_per_connection: 4,
            connects_per_peer_per_sec: 200,
            connect_burst_per_peer: 1000,
            application: "VIGIL".into(),
            facility: "HOSP".into(),
            tls: None,
        }
    }

    #[test]
    fn the_frame_clock_stands_still_while_the_pipeline_is_full() {
        let settings = settings();
        let t0 = Instant::now();
        let mut frame_started = Some((t0, 100));
        let mut stalled_since = None;
        // 10 s into the frame the pipeline fills; commits take 60 s to answer one message.
        hold_frame_clock(&mut frame_started, &mut stalled_since, true, false, t0 + Duration::from_secs(10));
        assert_eq!(stalled_since, Some(t0 + Duration::from_secs(10)));
        let stalled = next_deadline(&settings, true, t0, t0, frame_started, false, false);
        assert!(stalled.is_none(), "no frame clock while not reading: {stalled:?}");
        hold_frame_clock(&mut frame_started, &mut stalled_since, true, true, t0 + Duration::from_secs(70));
        assert_eq!(stalled_since, None);
        let (at, why) = next_deadline(&settings, true, t0, t0, frame_started, true, false).unwrap();
        assert!(matches!(why, Deadline::Frame));
        // 10 s of the frame's 30 were used before the stall: 20 s are left after it.
        assert_eq!(at, t0 + Duration::from_secs(90));
    }

    #[test]
    fn a_peer_that_drips_while_the_server_reads_is_still_timed_out() {
        let settings = settings();
        let t0 = Instant::now();
        let mut frame_started = Some((t0, 10));
        let mut stalled_since = None;
        for s in 0..40 {
            hold_frame_clock(&mut frame_started, &mut stalled_since, true, true, t0 + Duration::from_secs(s));
        }
        let (at, why) = next_deadline(&settings, true, t0, t0, frame_started, true, false).unwrap();
        assert!(matches!(why, Deadline::Frame));
        assert_eq!(at, t0 + Duration::from_secs(30));
        // A connection that stops reading for good (shutdown, eviction) starts no stall.
        hold_frame_clock(&mut frame_started, &mut stalled_since, false, false, t0 + Duration::from_secs(41));
        assert_eq!(stalled_since, None);
    }
}
