//! The MLLP listener's promises at the socket: TLS, a thousand concurrent connections, the
//! frame size limit answered with AR, noise outside frames ignored, idle connections closed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil::config::TlsFileConfig;
use vigil_loadtest::mllp::{MllpClient, ack_code, ack_control_id, frame};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(20);

/// Reads framed replies, keeping bytes that arrive ahead of the frame asked for.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
}

impl Frames {
    async fn next<S: tokio::io::AsyncRead + Unpin>(&mut self, stream: &mut S) -> String {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                let frame = String::from_utf8_lossy(&self.buf[1..end]).into_owned();
                self.buf.drain(..end + 2);
                return frame;
            }
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.expect("reply in time").unwrap();
            assert!(n > 0, "connection closed before a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_over_tls_is_acknowledged_and_plaintext_is_not() {
    let dir = tempdir("tls");
    let (ca, cert, key) = test_certificates(&dir);
    let mut config = config(&dir);
    config.mllp.tls = Some(TlsFileConfig { cert_file: cert.clone(), key_file: key });
    let server = vigil::app::start(&config).await.unwrap();

    let mut tls = tls_connect(&ca, server.mllp_addr).await;
    tls.write_all(&frame(&septic_oru("TLS-1", "MRN-TLS", "Tau"))).await.unwrap();
    let ack = Frames::default().next(&mut tls).await;
    assert_eq!((ack_code(&ack), ack_control_id(&ack)), (Some("AA"), Some("TLS-1")), "{ack}");

    // A plaintext sender on the TLS port gets no ACK: its frame is never taken as a message.
    let mut plain = TcpStream::connect(server.mllp_addr).await.unwrap();
    plain.write_all(&frame(&septic_oru("PLAIN-1", "MRN-TLS", "Tau"))).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut reply)).await.expect("server closes it");
    assert!(read.is_err() || !String::from_utf8_lossy(&reply).contains("MSA|AA"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_are_all_acknowledged() {
    let dir = tempdir("many");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let addr = server.mllp_addr.to_string();
    // Open every connection first, so all 1,000 are held at once, then send on each.
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(MllpClient::connect(&addr, WAIT).await.unwrap());
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        tasks.spawn(async move {
            let control = format!("C1K-{i}");
            let ack = client.send(&septic_oru(&control, &format!("MRN-C1K-{}", i % 50), "Kilo")).await.unwrap();
            (control, ack)
        });
    }
    let mut acked = 0;
    while let Some(done) = tasks.join_next().await {
        let (control, ack) = done.unwrap();
        assert_eq!(ack_code(&ack), Some("AA"), "{ack}");
        assert_eq!(ack_control_id(&ack), Some(control.as_str()));
        acked += 1;
    }
    assert_eq!(acked, 1000);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_get_ar_noise_is_ignored_and_idle_connections_close() {
    let dir = tempdir("limits");
    let mut config = config(&dir);
    config.mllp.max_frame_bytes = 4096;
    config.mllp.idle_timeout = Duration::from_secs(1);
    let server = vigil::app::start(&config).await.unwrap();
    let mut stream = TcpStream::connect(server.mllp_addr).await.unwrap();

    let big = format!("{}\rNTE|1||{}", septic_oru("BIG-1", "MRN-BIG", "Large"), "x".repeat(10_000));
    let mut bytes = b"garbage before the frame".to_vec();
    bytes.extend(frame(&big));
    bytes.extend(b"\r\n noise between frames \r\n");
    bytes.extend(frame(&septic_oru("SMALL-1", "MRN-BIG", "Large")));
    stream.write_all(&bytes).await.unwrap();
    let mut frames = Frames::default();
    let first = frames.next(&mut stream).await;
    assert_eq!((ack_code(&first), ack_control_id(&first)), (Some("AR"), Some("BIG-1")), "{first}");
    assert!(first.contains("exceeds the 4096 byte limit"), "{first}");
    let second = frames.next(&mut stream).await;
    assert_eq!((ack_code(&second), ack_control_id(&second)), (Some("AA"), Some("SMALL-1")), "{second}");

    // Silent for longer than the idle timeout: the server closes the connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "idle connection not closed: {closed:?}");

    // The bytes outside frames were counted.
    let noise = "garbage before the frame".len() + "\r\n noise between frames \r\n".len();
    let mut http = TcpStream::connect(server.http_addr).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut metrics = String::new();
    http.read_to_string(&mut metrics).await.unwrap();
    let discarded: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_mllp_discarded_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the discarded-bytes counter is exported");
    assert_eq!(discarded, noise);
    server.shutdown().await;
}

/// A value that cannot be used (FiO2 0.4 "%", an unknown consciousness) is dropped and
/// counted on `/metrics`; the message is still accepted with a plain AA (as before: the ACK
/// does not list dropped values) and its other rows are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_value_is_counted_and_the_message_still_accepted() {
    let dir = tempdir("dropped");
    let server = vigil::app::start(&config(&dir)).await.unwrap();
    let ts = now_dtm();
    let oru = [
        septic_oru("DROP-1", "MRN-DROP", "Dropped"),
        format!("OBX|4|NM|3150-0^Inhaled oxygen concentration^LN|1|0.4|%|||||F|||{ts}"),
        format!("OBX|5|ST|67775-7^Level of responsiveness^LN|1|sleepy||||||F|||{ts}"),
    ]
    .join("\r");
    let mut stream = TcpStream::connect(server.mllp_addr).await.unwrap();
    stream.write_all(&frame(&oru)).await.unwrap();
    let ack = Frames::default().next(&mut stream).await;
    assert_eq!((ack_code(&ack), ack_control_id(&ack)), (Some("AA"), Some("DROP-1")), "{ack}");
    assert!(!ack.contains("\rERR|"), "an accepted message carries no ERR: {ack}");

    let mut http = TcpStream::connect(server.http_addr).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut metrics = String::new();
    http.read_to_string(&mut metrics).await.unwrap();
    for series in [
        "vigil_observations_dropped_total{analyte=\"fio2\",reason=\"implausible\"} 1",
        "vigil_observations_dropped_total{analyte=\"consciousness\",reason=\"unknown_answer\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} missing from:\n{metrics}");
    }
    assert!(!metrics.contains("analyte=\"rr\""), "the usable rows are not counted as dropped");
    server.shutdown().await;
}

/// Shutdown in its order: intake stops first (both listening sockets closed, so a new
/// connection is refused), the messages a connection had begun are still answered, every
/// tracked task ends, and every message acknowledged on the way is in the store afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_intake_first_answers_what_was_begun_and_ends_every_task() {
    let dir = tempdir("shutdown-order");
    let mut server = vigil::app::start(&config(&dir)).await.unwrap();
    let mut stream = TcpStream::connect(server.mllp_addr).await.unwrap();
    let mut frames = Frames::default();
    stream.write_all(&frame(&septic_oru("SHUT-0", "MRN-SHUT", "Order"))).await.unwrap();
    let first = frames.next(&mut stream).await;
    assert_eq!((ack_code(&first), ack_control_id(&first)), (Some("AA"), Some("SHUT-0")), "{first}");

    // A pipelined batch in one write (one read on the server: under its 16 KiB buffer): once the
    // first of it is answered, the server has begun all of it, and shutdown begins then.
    let batch: Vec<String> = (1..=12).map(|i| format!("SHUT-{i}")).collect();
    let bytes: Vec<u8> = batch.iter().flat_map(|id| frame(&septic_oru(id, "MRN-SHUT", "Order"))).collect();
    assert!(bytes.len() < 16 * 1024);
    stream.write_all(&bytes).await.unwrap();
    let ack = frames.next(&mut stream).await;
    assert_eq!((ack_code(&ack), ack_control_id(&ack)), (Some("AA"), Some("SHUT-1")), "{ack}");
    let stages = server.stop_intake().await;
    assert_eq!(stages.first().map(|(name, _)| *name), Some("mllp: in-flight messages answered"));

    // Intake is closed: a newcomer is refused on both ports, at once (not left in a backlog).
    for port in [server.mllp_addr, server.http_addr] {
        let refused = TcpStream::connect(port).await.map(|_| ()).map_err(|e| e.kind());
        assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused), "{port}");
    }
    // What was begun before was answered, in order, and then the connection closed. (Frames
    // received but not yet begun are not: their sender, without an ACK, sends them again.)
    let mut acked = vec!["SHUT-0".to_string(), "SHUT-1".to_string()];
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(_))), "connection not closed after its answers: {closed:?}");
    frames.buf.extend_from_slice(&rest);
    while let Some(end) = frames.buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
        let ack = String::from_utf8_lossy(&frames.buf[1..end]).into_owned();
        frames.buf.drain(..end + 2);
        let expected = &batch[acked.len() - 1];
        assert_eq!((ack_code(&ack), ack_control_id(&ack)), (Some("AA"), Some(expected.as_str())), "{ack}");
        acked.push(expected.clone());
    }
    assert!(frames.buf.is_empty(), "a partial frame after the last answer");
    println!("answered after intake stopped: {}", acked.len() - 2);

    let report = server.shutdown().await;
    println!("{report:?}");
    assert_eq!(report.tasks_left, 0, "every tracked task ended within its deadline: {report:?}");
    assert_eq!(report.actors_drained, 1, "{report:?}");
    let names: Vec<&str> = report.stages.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "mllp: in-flight messages answered",
            "http: connections closed",
            "websocket sessions closed",
            "background tasks ended",
            "device actors stopped",
            "patient actors drained",
            "store flushed"
        ]
    );
    // Every acknowledged message is durable.
    let mut stored = stored_control_ids(&dir, &["MRN-SHUT".to_string()]).await;
    stored.sort();
    stored.dedup();
    acked.sort();
    assert_eq!(stored, acked);
}
