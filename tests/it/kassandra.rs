//! Test support: kassandra (an in-memory CQL server library) served on a loopback port, so the
//! Scylla adapter is exercised over a real socket with the real driver. One session behind a
//! mutex serves every connection; a panic while handling one request becomes an error response
//! and the server carries on. Also used by `benches/store.rs`.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use kassandra::KassandraSession;
use kassandra::error::DbError;
use kassandra::frame::request::Request;
use kassandra::frame::response::Response;
use kassandra::frame::response::error::Error as CqlError;
use tokio::net::TcpListener;

/// A kassandra server on 127.0.0.1:0; stops when dropped. [`Kassandra::stop`] takes it off the
/// network (listener closed, every connection dropped) and [`Kassandra::restart`] brings it back
/// on the same address with the same data, as a node that went away and returned.
pub struct Kassandra {
    pub addr: SocketAddr,
    session: Arc<Mutex<KassandraSession>>,
    accept: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for Kassandra {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.accept.abort();
    }
}

pub async fn serve() -> Kassandra {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind kassandra");
    let addr = listener.local_addr().expect("kassandra address");
    let session = Arc::new(Mutex::new(KassandraSession::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, Arc::clone(&session), stopped));
    Kassandra { addr, session, accept, stop }
}

// benches/store.rs includes this file and never stops its server.
#[allow(dead_code)]
impl Kassandra {
    /// Off the network: no listener, every connection closed. The data stays.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        self.accept.abort();
        let _ = (&mut self.accept).await;
    }

    /// Back on the same address, with the same data.
    pub async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind kassandra on its address");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        self.stop = stop;
        self.accept = tokio::spawn(accept_loop(listener, Arc::clone(&self.session), stopped));
    }
}

async fn accept_loop(
    listener: TcpListener,
    session: Arc<Mutex<KassandraSession>>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    while let Ok((socket, _)) = listener.accept().await {
        let session = Arc::clone(&session);
        let mut stopped = stopped.clone();
        // Answers are small frames: without NODELAY each waits for the peer's delayed ACK.
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let (read, write) = socket.into_split();
            let mut requests = kassandra::frame::request_stream(read);
            let mut responses = kassandra::frame::response_sink(write);
            loop {
                let next = tokio::select! {
                    next = requests.next() => next,
                    _ = stopped.wait_for(|stop| *stop) => break,
                };
                let Some(Ok((frame, opcode, body))) = next else { break };
                let response = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
                    handle(&mut session, opcode, &body, frame.flags)
                }))
                .unwrap_or_else(|_| {
                    Response::Error(CqlError::new(DbError::ServerError, "kassandra panicked on this request"))
                });
                if responses.send((response, frame.stream)).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn handle(
    session: &mut KassandraSession,
    opcode: kassandra::frame::request::RequestOpcode,
    body: &[u8],
    flags: kassandra::frame::FrameFlags,
) -> Response {
    let request = match Request::deserialize(opcode, body, flags) {
        Ok(request) => request,
        Err(e) => return Response::Error(e),
    };
    let result = match request {
        Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
        Request::Options => return Response::options(),
        Request::Query(query) => session.process(query),
        Request::Prepare(query) => session.prepare(query),
        Request::Execute(execute) => session.execute(execute),
        Request::Batch(batch) => session.process_batch(batch),
        Request::AuthResponse => return Response::Error(CqlError::new(DbError::ProtocolError, "no authentication")),
    };
    match result {
        Ok(result) => Response::Result(result),
        Err(e) => Response::Error(e),
    }
}
