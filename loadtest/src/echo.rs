//! The echo baseline: the smallest MLLP server that answers every frame `AA` (MSA-2 = the
//! message's MSH-10), doing no parsing, storage or rules. Run against the same scenario in
//! the same run, it says what the machine, the network path and the harness itself carry, so a
//! report can state Vigil's rate as a fraction of it.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::mllp::{CARRIAGE_RETURN, END_BLOCK, START_BLOCK};

/// Largest frame the echo server accepts; larger ones close the connection.
pub const MAX_FRAME_BYTES: usize = 1 << 20;
/// Connections served at once; more wait in the accept backlog.
pub const MAX_CONNECTIONS: usize = 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Serve `listener` until `shutdown` turns true (or its sender is dropped).
pub async fn serve(listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        connections.spawn(async move {
            let _permit = permit;
            if let Err(e) = echo_connection(stream).await {
                tracing::debug!(error = %e, "echo connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Bind `addr` and serve in a background task; returns the bound address and the switch
/// that stops it.
pub async fn spawn(addr: &str) -> std::io::Result<(String, watch::Sender<bool>, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?.to_string();
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, rx));
    Ok((bound, tx, task))
}

async fn echo_connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        while let Some((start, end)) = next_frame(&buf[consumed..]) {
            let frame = &buf[consumed + start + 1..consumed + end];
            push_ack(&mut out, control_id(frame));
            consumed += end + 2;
        }
        buf.drain(..consumed);
        if buf.len() > MAX_FRAME_BYTES {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame over the size limit"));
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Start-block index and end-block index of the first complete frame in `data`.
fn next_frame(data: &[u8]) -> Option<(usize, usize)> {
    let start = data.iter().position(|&b| b == START_BLOCK)?;
    let end = data[start..].windows(2).position(|w| w == [END_BLOCK, CARRIAGE_RETURN])? + start;
    Some((start, end))
}

/// MSH-10 of a frame (bytes up to the 10th field separator), or empty.
fn control_id(frame: &[u8]) -> &[u8] {
    let msh = frame.split(|&b| b == b'\r').next().unwrap_or_default();
    let Some(&separator) = msh.get(3) else { return &[] };
    msh.split(|&b| b == separator).nth(9).unwrap_or_default()
}

fn push_ack(out: &mut Vec<u8>, control_id: &[u8]) {
    out.push(START_BLOCK);
    out.extend_from_slice(b"MSH|^~\\&|ECHO|ECHO|||20260101000000||ACK|E");
    out.extend_from_slice(control_id);
    out.extend_from_slice(b"|P|2.5\rMSA|AA|");
    out.extend_from_slice(control_id);
    out.extend_from_slice(b"\r");
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mllp::{MllpClient, ack_code, ack_control_id};

    #[test]
    fn control_id_is_msh_10() {
        assert_eq!(control_id(b"MSH|^~\\&|A|B|C|D|2025||ORU^R01|CID7|P|2.6\rPID|1"), b"CID7");
        assert_eq!(control_id(b"MSH#^~\\&#A#B#C#D#2025##ORU#X9#P"), b"X9");
        assert_eq!(control_id(b"MS"), b"");
        assert_eq!(control_id(b""), b"");
    }

    #[tokio::test]
    async fn answers_every_pipelined_frame_aa_with_its_control_id() {
        let (addr, stop, task) = spawn("127.0.0.1:0").await.unwrap();
        let mut client = MllpClient::connect(&addr, Duration::from_secs(5)).await.unwrap();
        let messages: Vec<String> = (0..300)
            .map(|i| format!("MSH|^~\\&|A|B|C|D|2025||ORU^R01|E{i}|P|2.6\rOBX|1|{}\r", "x".repeat(500)))
            .collect();
        let acks = client.send_pipelined(&messages).await.unwrap();
        for (i, ack) in acks.iter().enumerate() {
            assert_eq!(ack_code(ack), Some("AA"));
            assert_eq!(ack_control_id(ack), Some(format!("E{i}").as_str()));
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("echo server stops").unwrap();
    }

    #[tokio::test]
    async fn an_endless_frame_closes_the_connection() {
        let (addr, _stop, _task) = spawn("127.0.0.1:0").await.unwrap();
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let junk = vec![b'x'; 64 * 1024];
        stream.write_all(&[START_BLOCK]).await.unwrap();
        let mut closed = false;
        for _ in 0..64 {
            if stream.write_all(&junk).await.is_err() {
                closed = true;
                break;
            }
        }
        if !closed {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut b)).await.expect("closed");
            assert!(matches!(n, Ok(0) | Err(_)));
        }
    }
}
