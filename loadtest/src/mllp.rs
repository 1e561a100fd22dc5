//! Async MLLP client: frames HL7 v2 messages, sends them to Vigil and reads back the ACKs.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// MLLP start block (VT).
pub const START_BLOCK: u8 = 0x0B;
/// MLLP end block (FS).
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return that must follow the end block.
pub const CARRIAGE_RETURN: u8 = 0x0D;
/// Largest ACK payload accepted; an ACK is a few hundred bytes, so anything near
/// this is a misbehaving peer and must not be allowed to grow our memory.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Writes are flushed in chunks of about this size when pipelining so a large
/// batch never needs one contiguous buffer.
const WRITE_CHUNK: usize = 64 * 1024;
const READ_CHUNK: usize = 8 * 1024;

/// Why a send did not yield an ACK.
#[derive(Debug, thiserror::Error)]
pub enum MllpClientError {
    /// Socket-level failure.
    #[error("MLLP I/O error: {0}")]
    Io(#[from] io::Error),
    /// No complete reply arrived within the client's timeout.
    #[error("timed out after {0:?} waiting for an MLLP reply")]
    Timeout(Duration),
    /// The peer sent a reply larger than [`MAX_REPLY_BYTES`].
    #[error("MLLP reply exceeds {MAX_REPLY_BYTES} bytes")]
    ReplyTooLarge,
    /// The peer closed the connection before a full reply arrived.
    #[error("connection closed by peer before a complete reply")]
    Closed,
    /// The reply was not UTF-8 text.
    #[error("MLLP reply is not valid UTF-8")]
    NotUtf8,
    /// An earlier failure left unread or half-read replies on this connection, so
    /// further replies could be matched to the wrong message: reconnect instead.
    #[error("connection is unusable after an earlier error; reconnect")]
    Broken,
}

/// One MLLP connection. Not `Clone`: replies are matched to requests by order,
/// so only one owner may talk on a connection.
#[derive(Debug)]
pub struct MllpClient {
    stream: TcpStream,
    /// Bytes received past the end of the last frame (pipelined replies).
    buf: Vec<u8>,
    timeout: Duration,
    broken: bool,
}

impl MllpClient {
    /// Connects to `addr` (`host:port`). `timeout` bounds the connect and, later,
    /// each wait for a reply.
    pub async fn connect(addr: &str, timeout: Duration) -> io::Result<Self> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "MLLP connect timed out"))??;
        // ACK latency is what we measure; Nagle would add up to 40 ms of noise.
        stream.set_nodelay(true)?;
        Ok(Self { stream, buf: Vec::with_capacity(READ_CHUNK), timeout, broken: false })
    }

    /// The per-reply timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes the per-reply timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends one message and returns its ACK without MLLP framing.
    pub async fn send(&mut self, message: &str) -> Result<String, MllpClientError> {
        if self.broken {
            return Err(MllpClientError::Broken);
        }
        let result = self.send_inner(message).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn send_inner(&mut self, message: &str) -> Result<String, MllpClientError> {
        let framed = frame(message);
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.stream.write_all(&framed))
            .await
            .map_err(|_| MllpClientError::Timeout(timeout))??;
        let (mut reader, _) = self.stream.split();
        read_frame_timeout(&mut reader, &mut self.buf, timeout).await
    }

    /// Writes all `messages` back to back, then returns their ACKs in order.
    /// Writing and reading run concurrently so a peer that acknowledges while we
    /// are still writing cannot deadlock us on full socket buffers.
    pub async fn send_pipelined(&mut self, messages: &[String]) -> Result<Vec<String>, MllpClientError> {
        if self.broken {
            return Err(MllpClientError::Broken);
        }
        let result = self.pipelined_inner(messages).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn pipelined_inner(&mut self, messages: &[String]) -> Result<Vec<String>, MllpClientError> {
        let timeout = self.timeout;
        let (mut reader, mut writer) = self.stream.split();
        let buf = &mut self.buf;
        let write = async {
            write_frames(&mut writer, messages, timeout).await?;
            Ok::<(), MllpClientError>(())
        };
        let read = async {
            let mut acks = Vec::with_capacity(messages.len());
            for _ in messages {
                acks.push(read_frame_timeout(&mut reader, buf, timeout).await?);
            }
            Ok::<Vec<String>, MllpClientError>(acks)
        };
        let ((), acks) = tokio::try_join!(write, read)?;
        Ok(acks)
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    messages: &[String],
    timeout: Duration,
) -> Result<(), MllpClientError> {
    let mut out = Vec::with_capacity(WRITE_CHUNK);
    for (i, m) in messages.iter().enumerate() {
        push_frame(&mut out, m);
        if out.len() >= WRITE_CHUNK || i + 1 == messages.len() {
            tokio::time::timeout(timeout, writer.write_all(&out))
                .await
                .map_err(|_| MllpClientError::Timeout(timeout))??;
            out.clear();
        }
    }
    Ok(())
}

/// Wraps `msg` in MLLP framing: `0x0B <msg> 0x1C 0x0D`.
pub fn frame(msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 3);
    push_frame(&mut out, msg);
    out
}

pub(crate) fn push_frame(out: &mut Vec<u8>, msg: &str) {
    out.push(START_BLOCK);
    out.extend_from_slice(msg.as_bytes());
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
}

pub(crate) async fn read_frame_timeout<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<String, MllpClientError> {
    tokio::time::timeout(timeout, read_frame(reader, buf)).await.map_err(|_| MllpClientError::Timeout(timeout))?
}

/// Reads one MLLP frame. Bytes after the frame stay in `buf` for the next call;
/// `buf` never grows past [`MAX_REPLY_BYTES`] plus one read chunk.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<String, MllpClientError> {
    let mut chunk = [0u8; READ_CHUNK];
    // Bytes after the start block already searched for the end: each read is searched once, so
    // a large reply costs linear, not quadratic, time.
    let mut searched = 0usize;
    loop {
        // Noise before a start block (e.g. a stray CR/LF from a sloppy peer) is dropped.
        match buf.iter().position(|&b| b == START_BLOCK) {
            Some(0) => {}
            Some(start) => {
                buf.drain(..start);
                searched = 0;
            }
            None => {
                buf.clear();
                searched = 0;
            }
        }
        // One byte back: the FS of an end block may have come at the end of the last read.
        let from = searched.saturating_sub(1);
        if !buf.is_empty()
            && let Some(end) =
                buf[1 + from..].windows(2).position(|w| w == [END_BLOCK, CARRIAGE_RETURN]).map(|at| at + from)
        {
            let payload_end = end + 1;
            if payload_end - 1 > MAX_REPLY_BYTES {
                return Err(MllpClientError::ReplyTooLarge);
            }
            let text = std::str::from_utf8(&buf[1..payload_end]).map_err(|_| MllpClientError::NotUtf8)?.to_owned();
            buf.drain(..payload_end + 2);
            return Ok(text);
        }
        // +2 leaves room for the start block and a trailing FS still waiting for its CR.
        if buf.len() > MAX_REPLY_BYTES + 2 {
            return Err(MllpClientError::ReplyTooLarge);
        }
        searched = buf.len().saturating_sub(1);
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(MllpClientError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn msa_field(ack: &str, index: usize) -> Option<&str> {
    ack.split(['\r', '\n'])
        .find(|seg| seg.starts_with("MSA|"))
        .and_then(|seg| seg.split('|').nth(index))
        .map(|f| f.split('^').next().unwrap_or(f).trim())
        .filter(|f| !f.is_empty())
}

/// MSA-1, the acknowledgment code (`AA`, `AE`, `AR`, `CA`, `CE`, `CR`).
pub fn ack_code(ack: &str) -> Option<&str> {
    msa_field(ack, 1)
}

/// MSA-2, the control id of the message being acknowledged.
pub fn ack_control_id(ack: &str) -> Option<&str> {
    msa_field(ack, 2)
}

/// A minimal MLLP server for tests: acknowledges every message and records it.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::{frame, read_frame};

    /// How the test server answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Mode {
        /// `MSA|AA|<control id>`.
        Ack,
        /// A reply just over the size limit.
        Oversized,
        /// Reads but never answers.
        Silent,
        /// Acknowledges, but drops each connection after this many messages.
        DropAfter(usize),
    }

    #[derive(Debug, Clone, Default)]
    pub(crate) struct Received(pub Arc<Mutex<Vec<String>>>);

    impl Received {
        pub(crate) fn snapshot(&self) -> Vec<String> {
            self.0.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }

    pub(crate) fn control_id(msg: &str) -> String {
        msg.split('\r').next().and_then(|msh| msh.split('|').nth(9)).unwrap_or("").to_owned()
    }

    /// Starts the server on an ephemeral port and returns its address.
    pub(crate) async fn start(mode: Mode) -> (String, Received) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let received = Received::default();
        let rec = received.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut count = 0usize;
                    loop {
                        let (mut r, mut w) = sock.split();
                        let Ok(msg) = read_frame(&mut r, &mut buf).await else {
                            return;
                        };
                        let cid = control_id(&msg);
                        if let Ok(mut v) = rec.0.lock() {
                            v.push(msg);
                        }
                        count += 1;
                        let reply = match mode {
                            Mode::Ack | Mode::DropAfter(_) => frame(&format!(
                                "MSH|^~\\&|VIGIL|HOSP|SIM|SIM|20250101000000||ACK^R01^ACK|A{cid}|P|2.6\rMSA|AA|{cid}\r"
                            )),
                            Mode::Oversized => frame(&"X".repeat(super::MAX_REPLY_BYTES + 10)),
                            Mode::Silent => continue,
                        };
                        if w.write_all(&reply).await.is_err() {
                            return;
                        }
                        if let Mode::DropAfter(n) = mode
                            && count >= n
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, received)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Mode, start};
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn frame_wraps_message() {
        assert_eq!(frame("AB"), vec![0x0B, b'A', b'B', 0x1C, 0x0D]);
    }

    #[test]
    fn msa_fields() {
        let ack = "MSH|^~\\&|A|B|C|D|20250101||ACK|1|P|2.6\rMSA|CA|MSG42\r";
        assert_eq!(ack_code(ack), Some("CA"));
        assert_eq!(ack_control_id(ack), Some("MSG42"));
        assert_eq!(ack_code("MSH|x\rMSA||\r"), None);
        assert_eq!(ack_control_id("MSH|x"), None);
    }

    #[tokio::test]
    async fn read_frame_handles_split_and_coalesced_frames() {
        let mut data = b"\r\n".to_vec();
        data.extend(frame("one"));
        data.extend(frame("two"));
        let mut reader = &data[..];
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), "one");
        assert_eq!(read_frame(&mut reader, &mut buf).await.unwrap(), "two");
        assert!(matches!(read_frame(&mut reader, &mut buf).await, Err(MllpClientError::Closed)));
    }

    #[tokio::test]
    async fn send_returns_ack() {
        let (addr, rec) = start(Mode::Ack).await;
        let mut c = MllpClient::connect(&addr, T).await.unwrap();
        let ack = c.send("MSH|^~\\&|A|B|C|D|2025||ORU^R01|CID1|P|2.6\r").await.unwrap();
        assert_eq!(ack_code(&ack), Some("AA"));
        assert_eq!(ack_control_id(&ack), Some("CID1"));
        let ack = c.send("MSH|^~\\&|A|B|C|D|2025||ORU^R01|CID2|P|2.6\r").await.unwrap();
        assert_eq!(ack_control_id(&ack), Some("CID2"));
        assert_eq!(rec.snapshot().len(), 2);
    }

    #[tokio::test]
    async fn pipelined_replies_in_order() {
        let (addr, rec) = start(Mode::Ack).await;
        let mut c = MllpClient::connect(&addr, T).await.unwrap();
        // Enough data to exceed one write chunk and typical socket buffers.
        let pad = "X".repeat(2000);
        let msgs: Vec<String> =
            (0..500).map(|i| format!("MSH|^~\\&|A|B|C|D|2025||ORU^R01|P{i}|P|2.6\rNTE|1||{pad}\r")).collect();
        let acks = c.send_pipelined(&msgs).await.unwrap();
        assert_eq!(acks.len(), 500);
        for (i, ack) in acks.iter().enumerate() {
            assert_eq!(ack_control_id(ack), Some(format!("P{i}").as_str()));
        }
        assert_eq!(rec.snapshot().len(), 500);
        assert!(c.send_pipelined(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn oversized_reply_is_an_error() {
        let (addr, _) = start(Mode::Oversized).await;
        let mut c = MllpClient::connect(&addr, T).await.unwrap();
        let err = c.send("MSH|^~\\&|A|B|C|D|2025||ORU^R01|BIG|P|2.6\r").await;
        assert!(matches!(err, Err(MllpClientError::ReplyTooLarge)), "{err:?}");
        assert!(matches!(c.send("again").await, Err(MllpClientError::Broken)));
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (addr, _) = start(Mode::Silent).await;
        let mut c = MllpClient::connect(&addr, Duration::from_millis(200)).await.unwrap();
        let started = std::time::Instant::now();
        let err = c.send("MSH|^~\\&|A|B|C|D|2025||ORU^R01|T1|P|2.6\r").await;
        assert!(matches!(err, Err(MllpClientError::Timeout(_))), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn closed_connection_is_an_error_not_a_panic() {
        let (addr, _) = start(Mode::DropAfter(1)).await;
        let mut c = MllpClient::connect(&addr, T).await.unwrap();
        c.send("MSH|^~\\&|A|B|C|D|2025||ORU^R01|D1|P|2.6\r").await.unwrap();
        let err = c.send("MSH|^~\\&|A|B|C|D|2025||ORU^R01|D2|P|2.6\r").await;
        assert!(matches!(err, Err(MllpClientError::Closed | MllpClientError::Io(_))), "{err:?}");
    }

    #[tokio::test]
    async fn connect_refused_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        assert!(MllpClient::connect(&addr, T).await.is_err());
    }
}
