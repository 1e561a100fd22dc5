//! What a message through an actor's port costs in instructions (the companion of
//! `actor_memory.rs`; issue 14, docs/BENCHMARKS.md): one actor on a current-thread runtime is
//! sent N `cast`s, in batches of `BURST` so that its mailbox both fills and runs dry, then one
//! `call` that waits for all of them. Under callgrind the count repeats exactly; the cost per
//! message is the difference between two N divided by their difference:
//!
//! ```sh
//! cargo build --release -p vigil-actors --example actor_messages
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/actor_messages 0
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/actor_messages 100000
//! ```

use ractor::Actor;

#[path = "common/counter.rs"]
mod counter;
use counter::{Counter, Msg};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Casts sent before the sender yields to the actor.
const BURST: u64 = 8;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let Ok((actor, handle)) = Actor::spawn(None, Counter, ()).await else {
        eprintln!("spawn failed");
        return;
    };
    for i in 0..n {
        if actor.cast(Msg::Add(i)).is_err() {
            eprintln!("cast failed");
            return;
        }
        if i % BURST == BURST - 1 {
            tokio::task::yield_now().await;
        }
    }
    let total = ractor::call!(actor, Msg::Total).unwrap_or(0);
    println!("{n} messages, total {total}");
    actor.stop(None);
    let _ = handle.await;
}
