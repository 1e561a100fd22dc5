//! What one idle actor costs in resident memory, the runtime alone (issue 14: 1,000,000 live
//! patient actors within 8 GiB is at most ~8.4 KB a patient, all included).
//!
//! Spawns N actors of the shape Vigil's patient actors have on the runtime's side (ractor 0.16
//! on tokio, each handling one message, then idle and kept alive), or with `task` N bare tokio
//! tasks each owning one unbounded channel (the least a mailbox-per-patient design needs), on
//! the allocator the server ships (mimalloc), and prints the RSS each adds:
//!
//! ```sh
//! cargo run --release -p vigil-actors --example actor_memory -- 200000
//! cargo run --release -p vigil-actors --example actor_memory -- 200000 task
//! ```

use ractor::Actor;

#[path = "common/counter.rs"]
mod counter;
use counter::{Counter, Msg};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000).max(1);
    let bare = args.next().as_deref() == Some("task");
    let before = rss();
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::with_capacity(n);
    for _ in 0..n {
        if bare {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            tokio::spawn(async move {
                let mut sum = 0;
                while let Some(m) = rx.recv().await {
                    sum += m;
                }
                sum
            });
            let _ = tx.send(1);
            held.push(Box::new(tx));
        } else {
            let Ok((actor, _)) = Actor::spawn(None, Counter, ()).await else {
                eprintln!("spawn failed");
                return;
            };
            let _ = actor.cast(Msg::Add(1));
            held.push(Box::new(actor));
        }
    }
    // Let every one handle its message and go idle.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let each = rss().saturating_sub(before) / n as u64;
    let what = if bare { "tokio tasks with one unbounded channel" } else { "idle ractor actors" };
    println!("{n} {what}: {each} bytes of RSS each (the handle kept for each included)");
}
