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

/// A kassandra server on 127.0.0.1:0; stops when dropped.
pub struct Kassandra {
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Kassandra {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub async fn serve() -> Kassandra {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind kassandra");
    let addr = listener.local_addr().expect("kassandra address");
    let session = Arc::new(Mutex::new(KassandraSession::new()));
    let accept = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let session = Arc::clone(&session);
            // Answers are small frames: without NODELAY each waits for the peer's delayed ACK.
            let _ = socket.set_nodelay(true);
            tokio::spawn(async move {
                let (read, write) = socket.into_split();
                let mut requests = kassandra::frame::request_stream(read);
                let mut responses = kassandra::frame::response_sink(write);
                while let Some(Ok((frame, opcode, body))) = requests.next().await {
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
    });
    Kassandra { addr, accept }
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
