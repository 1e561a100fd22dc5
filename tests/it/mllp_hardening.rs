//! The MLLP listener under hostile peers: slow drip and dawdling connections cannot lock a real
//! sender out, frames and first frames are bounded in time, and at the process's file limit
//! the accept loop backs off, logs little and recovers (the real binary under `prlimit`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use vigil_loadtest::mllp::{MllpClient, ack_code, ack_control_id};

use crate::support::*;

/// A connection from `source` (a loopback address of 127.0.0.0/8) to `to`.
async fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(to).await
}

/// Opens a connection, starts a frame and sends one more byte a second, for ever; when the
/// server closes it, opens another a second later. Counts the connections it opened.
async fn drip(source: IpAddr, to: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = connect_from(source, to).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(&[0x0b, b'M']).await.is_err() {
            continue;
        }
        let mut scratch = [0u8; 64];
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if stream.write_all(b"S").await.is_err() {
                        break;
                    }
                }
                read = stream.read(&mut scratch) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break; // closed by the server: come back
                    }
                }
            }
        }
    }
}

async fn timed_ack(client: &mut MllpClient, control_id: &str) -> Duration {
    let started = Instant::now();
    let ack = client.send(&septic_oru(control_id, "MRN-DRIP", "Drip")).await.expect("an ack");
    assert_eq!((ack_code(&ack), ack_control_id(&ack)), (Some("AA"), Some(control_id)), "{ack}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_500_slow_drip_connections_do_not_delay_a_real_senders_ack_beyond_1s() {
    // The data on tmpfs: this times the listener against drippers, not the disk. In a CI run
    // beside other tests one AA took 2.87 s; reproduced beside a 4 GB write, the slow round's
    // AA (1.66 s) matched a 1.91 s fsync on the same disk while the runtime's wake-up lag
    // stayed under 80 ms: the wait was the disk's, not the drippers'.
    let dir = memory_tempdir("drip");
    let mut config = config(&dir);
    // Fewer slots than drippers, so they fill the table and must be evicted; a per-peer cap
    // above each dripping address's 50 connections, as for a gateway with many monitors.
    config.mllp.max_connections = 256;
    config.mllp.max_connections_per_peer = 64;
    let server = vigil::app::start(&config).await.unwrap();
    let addr = server.mllp_addr;
    // A sender connected before the attack, which stays connected through it.
    let mut steady = MllpClient::connect(&addr.to_string(), Duration::from_secs(5)).await.unwrap();
    timed_ack(&mut steady, "DRIP-0").await;

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let mut drippers = tokio::task::JoinSet::new();
    for n in 0..500u32 {
        let source = IpAddr::from([127, 0, 0, 2 + (n % 10) as u8]);
        drippers.spawn(drip(source, addr, Arc::clone(&stop), Arc::clone(&opened)));
    }
    // Let the drippers fill every slot.
    let filled = Instant::now();
    while opened.load(Ordering::Relaxed) < 500 && filled.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened.load(Ordering::Relaxed) >= 500, "drippers connected: {}", opened.load(Ordering::Relaxed));

    let (mut steady_times, mut fresh_times) = (Vec::new(), Vec::new());
    for round in 1..=16 {
        // The connected sender, and a sender opening a new connection into the full table.
        steady_times.push(timed_ack(&mut steady, &format!("DRIP-S{round}")).await);
        let started = Instant::now();
        let mut fresh = MllpClient::connect(&addr.to_string(), Duration::from_secs(5)).await.unwrap();
        timed_ack(&mut fresh, &format!("DRIP-F{round}")).await;
        fresh_times.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let evicted = server.mllp_metrics.evicted.load(Ordering::Relaxed);
    steady_times.sort();
    fresh_times.sort();
    eprintln!(
        "slow drip: connected sender median {:?} max {:?}; new connection (connect + ack) median {:?} max {:?}; {evicted} dripping connections evicted",
        steady_times[8], steady_times[15], fresh_times[8], fresh_times[15]
    );
    let worst = steady_times[15].max(fresh_times[15]);
    assert!(worst < Duration::from_secs(1), "a real sender waited {worst:?}");
    assert!(evicted >= 16, "the table was full and drippers made room: {evicted} evictions");
    drippers.abort_all();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_frames_and_first_frames_are_bounded_in_time_not_reset_by_each_byte() {
    let dir = tempdir("frame-clock");
    let mut config = config(&dir);
    config.mllp.first_frame_timeout = Duration::from_secs(2);
    config.mllp.frame_timeout = Duration::from_secs(2);
    let server = vigil::app::start(&config).await.unwrap();

    // Silent after connecting: closed at the first-frame clock, not the 300 s idle timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.mllp_addr).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "silent connection not closed: {closed:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed too early: {:?}", started.elapsed());

    // A sender that delivered a message, then drips its next frame a byte every 300 ms:
    // closed at the frame clock though every byte arrives well within the idle timeout.
    let mut client = TcpStream::connect(server.mllp_addr).await.unwrap();
    client.write_all(&vigil_loadtest::mllp::frame(&septic_oru("CLOCK-1", "MRN-CLOCK", "Clock"))).await.unwrap();
    let mut reply = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), client.read(&mut reply)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&reply[..n]).contains("MSA|AA|CLOCK-1"));
    client.write_all(&[0x0b]).await.unwrap();
    let dripping = Instant::now();
    let cut = loop {
        tokio::select! {
            read = client.read(&mut reply) => break read,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                if client.write_all(b"x").await.is_err() {
                    break Ok(0);
                }
            }
        }
        assert!(dripping.elapsed() < Duration::from_secs(20), "a dripped frame was never cut off");
    };
    assert!(matches!(cut, Ok(0) | Err(_)), "{cut:?}");
    assert!(dripping.elapsed() >= Duration::from_millis(1500), "cut too early: {:?}", dripping.elapsed());
    let metrics = &server.mllp_metrics;
    assert_eq!(metrics.first_frame_timeouts.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.frame_timeouts.load(Ordering::Relaxed), 1);
    server.shutdown().await;
}

/// `GET /healthz`, within `within`: whether it answered 200.
async fn healthz(http: SocketAddr, within: Duration) -> bool {
    let ask = async {
        let mut stream = TcpStream::connect(http).await.ok()?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        Some(reply.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(within, ask).await.ok().flatten().unwrap_or(false)
}

/// One message on a new MLLP connection, within `within`: whether it got its AA.
async fn mllp_accepts(mllp: SocketAddr, control_id: &str, within: Duration) -> bool {
    let send = async {
        let mut client = MllpClient::connect(&mllp.to_string(), within).await.ok()?;
        let ack = client.send(&septic_oru(control_id, "MRN-FD", "Limit")).await.ok()?;
        Some(ack_code(&ack) == Some("AA"))
    };
    tokio::time::timeout(within, send).await.ok().flatten().unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_at_the_file_limit_backs_off_logs_little_and_recovers() {
    let dir = tempdir("fd-limit");
    let data = dir.join("data");
    let rules = rules_dir();
    let data_arg = data.to_str().unwrap().to_string();
    let args = vigil_args("serve", &data_arg, rules.to_str().unwrap(), &[]);
    // 400 descriptors, soft and hard, so the server cannot raise its limit out of the test.
    let mut command = std::process::Command::new("prlimit");
    command
        .arg("--nofile=400:400")
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_vigil"))
        .args(&args)
        .env("VIGIL_LOG", "info")
        .stderr(std::process::Stdio::inherit());
    let mut proc = spawn_command(command);
    let log = proc.collect_stdout();
    let log_lines = |log: &std::sync::Mutex<Vec<String>>| log.lock().unwrap().clone();

    // MLLP connections alone cannot take the descriptors health checks need: MLLP is capped
    // below the limit (mllp.reserved_fds), and a real sender still gets in.
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(TcpStream::connect(proc.mllp).await.unwrap());
    }
    assert!(healthz(proc.http, Duration::from_secs(10)).await, "/healthz under an MLLP connection flood");
    assert!(mllp_accepts(proc.mllp, "FD-1", Duration::from_secs(10)).await, "MLLP under an MLLP connection flood");

    // Idle HTTP connections take every descriptor left; then MLLP connections queue in the
    // backlog, so each MLLP accept fails with EMFILE for as long as this lasts.
    let before = log_lines(&log).len();
    let exhausted = Instant::now();
    // Until the HTTP backlog is full too (connects then stall): every descriptor is taken.
    let mut stalled = 0;
    while held.len() < 700 && stalled < 3 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(proc.http)).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => stalled += 1,
        }
    }
    let http_connected = exhausted.elapsed();
    for _ in 0..50 {
        held.push(TcpStream::connect(proc.mllp).await.unwrap());
    }
    let mllp_connected = exhausted.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = log_lines(&log);
    let lines = &during[before..];
    let secs = exhausted.elapsed().as_secs_f64();
    let accept_lines = lines.iter().filter(|l| l.contains("mllp accept failing")).count();
    eprintln!(
        "at the file limit for {secs:.1} s (HTTP connects took {http_connected:?}, MLLP {mllp_connected:?}): {} log lines, {accept_lines} of them MLLP accept summaries",
        lines.len()
    );
    assert!(accept_lines >= 1, "the MLLP accept loop never met the limit:\n{}", lines.join("\n"));
    // One summary per 10 s from each accept loop (MLLP, HTTP).
    assert!(accept_lines as f64 <= secs / 10.0 + 2.0, "{accept_lines} MLLP accept lines in {secs:.1} s");
    assert!(lines.len() as f64 <= 2.0 * secs + 20.0, "{} log lines in {secs:.1} s:\n{}", lines.len(), lines.join("\n"));

    // Released: both ports answer again.
    drop(held);
    let recovered = Instant::now();
    let mut healthy = false;
    let mut accepting = false;
    while recovered.elapsed() < Duration::from_secs(30) && !(healthy && accepting) {
        healthy = healthy || healthz(proc.http, Duration::from_secs(2)).await;
        accepting = accepting || mllp_accepts(proc.mllp, "FD-2", Duration::from_secs(2)).await;
    }
    eprintln!("recovered in {:?}", recovered.elapsed());
    assert!(healthy && accepting, "after release: /healthz {healthy}, MLLP {accepting}");
    drop(proc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_connections_past_a_peers_rate_are_closed_at_once_and_other_peers_are_served() {
    let dir = tempdir("connect-rate");
    let mut config = config(&dir);
    config.mllp.connects_per_peer_per_sec = 2;
    config.mllp.connect_burst_per_peer = 10;
    let server = vigil::app::start(&config).await.unwrap();
    let addr = server.mllp_addr;
    let churner: IpAddr = "127.0.0.9".parse().unwrap();
    // 40 connections one after another from one address: its burst of 10 is served, and one
    // more for each half second the loop takes (2 a second refill); the rest are closed before
    // taking a slot. The allowance is measured, not assumed: under load each AA takes longer.
    let mut served = 0;
    let mut held = Vec::new();
    let started = Instant::now();
    for _ in 0..40 {
        let mut stream = connect_from(churner, addr).await.unwrap();
        stream
            .write_all(&vigil_loadtest::mllp::frame(&septic_oru(&format!("RATE-{served}"), "MRN-RATE", "Rate")))
            .await
            .unwrap();
        let mut reply = [0u8; 256];
        let answered = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut reply)).await;
        if matches!(answered, Ok(Ok(n)) if n > 0) {
            served += 1;
            held.push(stream);
        }
    }
    let allowed = 10 + (2.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!((10..=allowed.min(39)).contains(&served), "{served} of 40 connections served, {allowed} allowed");
    let limited = server.mllp_metrics.rate_limited.load(Ordering::Relaxed);
    assert_eq!(limited as usize, 40 - served, "every connection not served was counted as rate-limited");
    // Another address is not affected.
    let mut other = MllpClient::connect(&addr.to_string(), Duration::from_secs(5)).await.unwrap();
    timed_ack(&mut other, "RATE-OTHER").await;
    drop(held);
    server.shutdown().await;
}
