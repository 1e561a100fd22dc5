//! What a live actor holds on the heap, the runtime's share (issue 14: a million live patient
//! actors within 8 GiB, about 8.4 KB a patient with everything else; docs/BENCHMARKS.md,
//! "sixteenth session"). Published ractor 0.16.5 allocated its two tokio channels' first blocks
//! at spawn, about 4.7 KB an actor; the vendored copy's patch (`vendor/ractor/VIGIL-PATCH.md`)
//! allocates a mailbox's queue on first use. This test fails if a ractor upgrade drops the patch.
//!
//! Counted in bytes requested from the allocator (deterministic), not RSS: its own test binary,
//! since the counting allocator is global.

use std::alloc::System;

use ractor::Actor;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[path = "../examples/common/counter.rs"]
mod counter;
use counter::{Counter, Msg};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Actors spawned; enough that one-off allocations (the runtime's, the registry's) vanish in
/// the mean.
const ACTORS: usize = 2_000;

/// Heap bytes a live idle actor may hold, the runtime's share: measured 2,247 with the patch and
/// 6,359 without it (x86-64, debug and release alike); the margin is for type sizes that move
/// with compiler and dependency versions.
const MAX_BYTES_PER_ACTOR: usize = 3_000;

#[tokio::test]
async fn an_idle_actor_that_handled_a_message_holds_little_of_the_heap() {
    let mut actors = Vec::with_capacity(ACTORS);
    let region = Region::new(GLOBAL);
    for _ in 0..ACTORS {
        let (actor, _) = Actor::spawn(None, Counter, ()).await.expect("spawn");
        actor.cast(Msg::Add(1)).expect("cast");
        actors.push(actor);
    }
    // Every actor has handled its message (a call answers after the cast before it).
    for actor in &actors {
        assert_eq!(ractor::call!(actor, Msg::Total).expect("call"), 1);
    }
    let change = region.change();
    let live = change.bytes_allocated as isize - change.bytes_deallocated as isize + change.bytes_reallocated;
    let per_actor = live / ACTORS as isize;
    eprintln!("{per_actor} heap bytes per live idle actor");
    assert!(
        per_actor <= MAX_BYTES_PER_ACTOR as isize,
        "{per_actor} heap bytes per idle actor, more than {MAX_BYTES_PER_ACTOR}: is ractor's mailbox patch in place?"
    );
    for actor in &actors {
        actor.stop(None);
    }
}
