//! The HTTP server: accepts connections under a cap (a permit per connection, held until the
//! socket closes, WebSocket sessions included: excess connections wait in the listen backlog),
//! optionally over TLS, and serves each with hyper's HTTP/1 under two clocks: the header-read
//! timeout (a request's head, and the wait for the next one on a kept-alive connection, must
//! arrive within it: a slow-loris peer is cut off) and the idle timeout (no byte either way for
//! that long ends any connection, upgraded ones too). Shutdown stops accepting and asks every
//! connection to finish its request and close. A peer address opening connections past its
//! rate (the MLLP listener's token bucket, [`ConnectRate`]) has each new one closed at once,
//! before it takes a permit's socket or reaches hyper: a reconnect loop cannot churn the server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::AcceptErrors;
use crate::ingest::mllp::rate::{ConnectRate, MAX_PEERS_TRACKED};

/// Limits of the HTTP server (`[http]` in the configuration).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// A request head must arrive within this (and the next one on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections open at once (WebSocket sessions included).
    pub max_connections: usize,
    /// New connections per peer address per second, after the burst (0: no limit).
    pub connects_per_peer_per_sec: u32,
    /// New connections one peer address may open at once.
    pub connect_burst_per_peer: u32,
}

/// What the HTTP accept loop refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Connections closed at once because their address opened too many too fast.
    pub rate_limited: AtomicU64,
}

/// Serve `app` on `listener` until `shutdown` is cancelled; `tick(false)` runs every
/// `tick_every`, and `tick(true)` once accepting has stopped (the failed-authentication flush).
/// Refusals are counted into `metrics`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    tick_every: Duration,
    tick: impl Fn(bool) + Send + 'static,
    metrics: Arc<ServerMetrics>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let rate = ConnectRate::new(limits.connects_per_peer_per_sec, limits.connect_burst_per_peer, MAX_PEERS_TRACKED);
    let mut errors = AcceptErrors::new("http");
    // Every connection is a task of this tracker; the listener's task waits for them all.
    let connections = TaskTracker::new();
    let mut ticker = tokio::time::interval(tick_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => { tick(false); continue; }
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    errors.succeeded();
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    if let Some(pause) = errors.failed(&e) {
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            },
        };
        if !rate.allow(peer.ip(), std::time::Instant::now()) {
            // Counted on /metrics; a log line per connection would let any peer write logs.
            metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let io = IdleTimeout::new(stream, limits.idle_timeout, permit);
        connections.spawn(connection(io, peer, app.clone(), limits.clone(), tls.clone(), shutdown.clone()));
    }
    // Closed at once: a new connection is refused, not left waiting in the backlog.
    drop(listener);
    errors.flush(true);
    tick(true);
    connections.close();
    connections.wait().await;
    // Every connection holds a permit until it closes, an upgraded WebSocket too (its task is
    // hyper's, not ours): all of them back means all are closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

async fn connection(
    io: IdleTimeout<TcpStream>,
    peer: SocketAddr,
    app: Router,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) {
    match tls {
        None => serve_connection(io, peer, app, limits, shutdown).await,
        Some(tls) => match tokio::time::timeout(limits.header_read_timeout, tls.accept(io)).await {
            Ok(Ok(io)) => serve_connection(io, peer, app, limits, shutdown).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
            Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
        },
    }
}

async fn serve_connection<I>(io: I, peer: SocketAddr, app: Router, limits: ServerLimits, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, request).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let outcome = tokio::select! {
        outcome = conn.as_mut() => outcome,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = outcome {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

/// A socket that fails with `TimedOut` once no byte has moved either way for `idle`, and
/// that holds its connection permit for as long as it lives (an upgraded WebSocket too).
struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, idle: Duration, permit: OwnedSemaphorePermit) -> Self {
        let now = Instant::now();
        IdleTimeout {
            inner,
            idle,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            _permit: permit,
        }
    }

    /// Called when the inner socket is not ready: fails once the idle time has passed. The
    /// timer is re-armed lazily, from the last activity, rather than on every byte.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last_activity + self.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle"));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.last_activity = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Paused time: the clock advances only when every task waits, so the writes land exactly
    // 250 ms apart however loaded the machine is (real sleeps made this flaky beside builds).
    #[tokio::test(start_paused = true)]
    async fn a_socket_with_no_traffic_times_out_and_traffic_keeps_it_open() {
        let permits = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let (near, mut far) = tokio::io::duplex(64);
        let idle = Duration::from_millis(400);
        let mut io = IdleTimeout::new(near, idle, permit);
        let mut buf = [0u8; 4];
        let started = Instant::now();
        for _ in 0..3 {
            // Each write lands well within the idle time, three times over its length in all.
            let writer = async {
                tokio::time::sleep(Duration::from_millis(250)).await;
                far.write_all(b"x").await.unwrap();
            };
            let (read, ()) = tokio::join!(io.read(&mut buf), writer);
            assert_eq!(read.unwrap(), 1, "traffic within the idle time");
        }
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // Idle from the last byte (at 750 ms), not from the first or from the lazy re-arming.
        assert_eq!(started.elapsed(), Duration::from_millis(750) + idle);
        assert_eq!(permits.available_permits(), 0, "the socket holds its connection permit");
        drop(io);
        assert_eq!(permits.available_permits(), 1, "and gives it back when it closes");
    }
}
