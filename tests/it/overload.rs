//! Overload: 64 MLLP connections offered 3x and then 5x what the server sustains (measured
//! first, on the same server), open loop, with poisoned messages mixed in. Every message is
//! answered on the connection it came on (no sender is cut off mid-pipeline), every message
//! answered AA is in the store, each poisoned message is refused without holding up the others,
//! and the server's memory stays bounded. The real binary, so its memory is its own.
//!
//! Short form in CI: `cargo test --test it overload`. Long form (the figures in
//! docs/RELIABILITY.md): `VIGIL_OVERLOAD_SECS=20 cargo test --test it overload -- --nocapture`,
//! or `tests/overload.sh`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use vigil_loadtest::mllp::{MllpClient, ack_code, ack_control_id, frame};

use crate::support::*;

const CONNECTIONS: usize = 64;
const PATIENTS: usize = 256;
/// One message in this many is poisoned (unparseable, or of a type Vigil refuses).
const POISON_EVERY: u64 = 97;
/// How long a sender waits for a write or a reply before it counts as cut off. Far above any
/// wait the server's back-pressure imposes here: the test is about the server never closing.
const PATIENCE: Duration = Duration::from_secs(180);

fn mrn(n: u64) -> String {
    format!("MRN-OV{}", n % PATIENTS as u64)
}

/// Message `n` of a phase: a septic ORU, or every [`POISON_EVERY`]th a poisoned one.
fn message(phase: &str, n: u64) -> (String, String, bool) {
    let id = format!("{phase}-{n}");
    if n % POISON_EVERY == POISON_EVERY - 1 {
        let poisoned = if n.is_multiple_of(2) {
            // Not HL7 at all.
            format!("this is not an HL7 message {id}")
        } else {
            // Well-formed, of a type Vigil does not take.
            format!("MSH|^~\\&|MONITOR|ICU|VIGIL|HOSP|{}||ZZZ^Z99|{id}|P|2.6\rPID|||{}^^^HOSP^MR", now_dtm(), mrn(n))
        };
        return (id, poisoned, true);
    }
    (id.clone(), septic_oru(&id, &mrn(n), "Overload"), false)
}

/// Reads one MLLP frame's payload from `stream`, keeping what follows it in `buf`.
async fn read_frame(stream: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut Vec<u8>) -> Result<String, String> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(start) = buf.iter().position(|&b| b == 0x0b)
            && let Some(end) = buf[start..].windows(2).position(|w| w == [0x1c, 0x0d])
        {
            let payload = String::from_utf8_lossy(&buf[start + 1..start + end]).into_owned();
            buf.drain(..start + end + 2);
            return Ok(payload);
        }
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("closed by the server before a complete reply".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Err(_) => return Err("no reply within the patience".into()),
        }
    }
}

/// What one connection saw: (control id sent, poisoned, ACK code, ACK's control id).
type Replies = Vec<(String, bool, Option<String>, Option<String>)>;

/// One open-loop connection: message `n` (for `n` = `conn`, `conn + CONNECTIONS`, ...) is due
/// at `start + n / rate`; whatever is due is written together (pipelining when the server
/// falls behind), replies are read concurrently.
async fn open_loop(
    addr: String,
    conn: u64,
    phase: String,
    total: u64,
    rate: f64,
    start: Instant,
) -> Result<Replies, String> {
    let stream = TcpStream::connect(&addr).await.map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut reader, mut writer) = stream.into_split();
    let per_connection = total.div_ceil(CONNECTIONS as u64) as usize + 1;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, bool)>(per_connection);
    let due = move |n: u64| start + Duration::from_secs_f64(n as f64 / rate);
    let write = async move {
        let mut n = conn;
        let mut out = Vec::new();
        while n < total {
            tokio::time::sleep_until(due(n)).await;
            let now = Instant::now();
            while n < total && due(n) <= now && out.len() < 64 * 1024 {
                let (id, text, poisoned) = message(&phase, n);
                out.extend_from_slice(&frame(&text));
                tx.send((id, poisoned)).await.map_err(|_| "reader gone".to_string())?;
                n += CONNECTIONS as u64;
            }
            match tokio::time::timeout(PATIENCE, writer.write_all(&out)).await {
                Ok(Ok(())) => out.clear(),
                Ok(Err(e)) => return Err(format!("write: {e}")),
                Err(_) => return Err("write blocked beyond the patience".into()),
            }
        }
        // Keep the write half open until every reply is in: a sender does not hang up first.
        Ok::<_, String>(writer)
    };
    let read = async move {
        let mut buf = Vec::new();
        let mut replies = Vec::new();
        while let Some((id, poisoned)) = rx.recv().await {
            let ack =
                read_frame(&mut reader, &mut buf).await.map_err(|e| format!("after {} replies: {e}", replies.len()))?;
            replies.push((id, poisoned, ack_code(&ack).map(str::to_owned), ack_control_id(&ack).map(str::to_owned)));
        }
        Ok::<_, String>(replies)
    };
    let (writer, replies) = tokio::try_join!(write, read)?;
    drop(writer);
    Ok(replies)
}

/// Resident and peak memory of `pid` in MiB (`VmRSS`, `VmHWM`).
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Phase {
    offered: f64,
    sent: usize,
    aa: usize,
    refused_poison: usize,
    seconds: f64,
}

async fn run_phase(addr: &str, phase: &str, total: u64, rate: f64, acked: &mut HashSet<String>) -> Phase {
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..CONNECTIONS as u64 {
        tasks.spawn(open_loop(addr.to_string(), conn, phase.to_string(), total, rate, start));
    }
    let mut failures = Vec::new();
    let mut result = Phase { offered: rate, sent: 0, aa: 0, refused_poison: 0, seconds: 0.0 };
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(replies) => {
                for (id, poisoned, code, acked_id) in replies {
                    result.sent += 1;
                    if poisoned {
                        assert_ne!(code.as_deref(), Some("AA"), "poisoned {id} accepted");
                        result.refused_poison += 1;
                        continue;
                    }
                    assert_eq!(code.as_deref(), Some("AA"), "{id} answered {code:?} under overload");
                    assert_eq!(acked_id.as_deref(), Some(id.as_str()), "replies out of order");
                    result.aa += 1;
                    acked.insert(id);
                }
            }
            Err(e) => failures.push(e),
        }
    }
    result.seconds = start.elapsed().as_secs_f64();
    assert!(failures.is_empty(), "{} of {CONNECTIONS} senders were cut off: {failures:?}", failures.len());
    assert_eq!(result.sent as u64, total, "every message answered");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_at_3x_and_5x_capacity_answers_every_message_loses_nothing_and_bounds_memory() {
    let secs: f64 = std::env::var("VIGIL_OVERLOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let dir = tempdir("overload");
    let data = dir.to_str().unwrap().to_string();
    let rules = rules_dir();
    // A 1 s frame clock: before the fix, any wait for commits longer than that with a partial
    // frame in the buffer closed the connection mid-pipeline.
    let config_file = dir.join("..").join("overload.toml");
    // Short pipelines, so they fill and wait for commits; bursty completions then stall a
    // connection for seconds with a partial frame in its buffer.
    std::fs::write(
        &config_file,
        "[mllp]\nframe_timeout_secs = 1\nfirst_frame_timeout_secs = 5\nmax_in_flight_per_connection = 16\n",
    )
    .unwrap();
    let args = vigil_args("serve", &data, rules.to_str().unwrap(), &["--config", config_file.to_str().unwrap()]);
    let proc = spawn_vigil(&args);
    let addr = proc.mllp.to_string();
    let pid = proc.child.id();
    let sampling = Arc::new(AtomicBool::new(true));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (sampling, peak_rss) = (Arc::clone(&sampling), Arc::clone(&peak_rss));
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak_rss.fetch_max(memory_mib(pid).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut acked = HashSet::new();

    // Capacity: 64 closed-loop pipelines of 40 messages each, as fast as the server answers.
    let warmup = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..CONNECTIONS as u64 {
        let addr = addr.clone();
        tasks.spawn(async move {
            let mut client = MllpClient::connect(&addr, PATIENCE).await.unwrap();
            let ids: Vec<String> = (0..40).map(|i| format!("CAP-{}", conn * 40 + i)).collect();
            let messages: Vec<String> =
                ids.iter().enumerate().map(|(i, id)| septic_oru(id, &mrn(conn * 40 + i as u64), "Overload")).collect();
            let acks = client.send_pipelined(&messages).await.expect("capacity phase");
            for ack in &acks {
                assert_eq!(ack_code(ack), Some("AA"));
            }
            ids
        });
    }
    while let Some(ids) = tasks.join_next().await {
        acked.extend(ids.unwrap());
    }
    let capacity = acked.len() as f64 / warmup.elapsed().as_secs_f64();
    println!("capacity: {} messages on {CONNECTIONS} connections at {capacity:.0} msg/s", acked.len());

    let mut phases = Vec::new();
    for factor in [3.0, 5.0] {
        let rate = capacity * factor;
        let total = (rate * secs).round() as u64;
        let phase = run_phase(&addr, &format!("X{factor}"), total, rate, &mut acked).await;
        println!(
            "{factor}x: offered {:.0} msg/s for {secs} s: {} messages, {} AA, {} poisoned refused, all answered in {:.1} s; peak RSS so far {} MiB",
            phase.offered,
            phase.sent,
            phase.aa,
            phase.refused_poison,
            phase.seconds,
            peak_rss.load(Ordering::Relaxed)
        );
        phases.push(phase);
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let (_, hwm) = memory_mib(pid);
    println!("server memory: peak RSS sampled {} MiB, VmHWM {hwm} MiB", peak_rss.load(Ordering::Relaxed));
    // The bound is in-flight messages (ingest permits, per-connection pipelines), not the
    // offered backlog, which stays with the senders.
    assert!(hwm < 1024, "server peak memory {hwm} MiB under overload");
    drop(proc); // kill -9: what was answered AA is durable already

    let mrns: Vec<String> = (0..PATIENTS as u64).map(mrn).collect();
    let stored: HashSet<String> = stored_control_ids(&dir, &mrns).await.into_iter().collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} acknowledged messages not stored: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    println!("{} messages acknowledged AA, all stored", acked.len());
}
