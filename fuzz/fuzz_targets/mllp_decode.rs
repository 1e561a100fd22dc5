//! Feed arbitrary bytes, split at arbitrary points, to `MllpDecoder::new(1024)`.
//!
//! Input layout: byte 0 = how many times the payload is fed (1..=32, so a 4 KiB input can
//! become a 128 KiB stream, e.g. one frame that never ends), bytes 1..5 = seed for the
//! chunk boundaries, the rest = the payload.
//!
//! Checked, through the public API only:
//! * no panic;
//! * every `Frame` is <= 1024 bytes, every `Oversized` is > 1024 with a prefix no longer
//!   than the frame;
//! * bytes out never exceed bytes in (frames + framing + discarded <= fed);
//! * the decoder's heap stays bounded by the frame limit plus one read (measured with a
//!   counting global allocator, since the buffer itself is private), whatever the stream
//!   length;
//! * the frames decoded do not depend on where the stream was split (compared with one
//!   single `extend` of the whole stream).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use vigil::ingest::mllp::codec::{Decoded, MllpDecoder};

const MAX_FRAME: usize = 1024;
/// `codec.rs` keeps at most this much of an oversized frame (documented behaviour).
const OVERSIZED_PREFIX: usize = 4096;

/// Live heap bytes allocated through Rust's allocator.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System` unchanged, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            LIVE.fetch_add(new, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// What a decode produced, reduced to what must not depend on chunking.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Frame(Vec<u8>),
    Oversized(usize),
}

fn check(item: &Decoded) -> (Out, usize) {
    match item {
        Decoded::Frame(f) => {
            assert!(f.len() <= MAX_FRAME, "frame of {} bytes > limit {MAX_FRAME}", f.len());
            (Out::Frame(f.clone()), f.len() + 3)
        }
        Decoded::Oversized { prefix, len } => {
            assert!(*len > MAX_FRAME, "oversized frame of only {len} bytes");
            assert!(prefix.len() <= *len, "prefix {} longer than frame {len}", prefix.len());
            assert!(prefix.len() <= OVERSIZED_PREFIX, "prefix of {} bytes kept", prefix.len());
            (Out::Oversized(*len), len + 3)
        }
    }
}

struct Rng(u32);
impl Rng {
    fn next(&mut self) -> u32 {
        // xorshift32
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let repeats = usize::from(data[0] % 32) + 1;
    let mut rng = Rng(u32::from_le_bytes([data[1], data[2], data[3], data[4]]) | 1);
    let payload = &data[5..];

    // Split feeding.
    let before = LIVE.load(Ordering::Relaxed);
    let mut d = MllpDecoder::new(MAX_FRAME);
    let mut out = Vec::new();
    let (mut fed, mut emitted, mut largest_read) = (0usize, 0usize, 0usize);
    for _ in 0..repeats {
        let mut rest = payload;
        while !rest.is_empty() {
            // Chunk sizes from 0 (an empty read) to the whole remainder, biased small.
            let r = rng.next() as usize;
            let n = match r % 4 {
                0 => r / 4 % 4,
                1 => r / 4 % 64,
                2 => r / 4 % 1500,
                _ => rest.len(),
            }
            .min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            d.extend(chunk);
            fed += chunk.len();
            largest_read = largest_read.max(chunk.len());
            while let Some(item) = d.decode() {
                let (o, bytes) = check(&item);
                emitted += bytes;
                out.push(o);
            }
            assert!(
                emitted as u64 + d.discarded() <= fed as u64,
                "emitted {emitted} + discarded {} > fed {fed}",
                d.discarded()
            );
            // The decoder's own heap (buffer + kept prefix), excluding `out`: measured as
            // the growth since it was created, minus what `out` holds.
            let held: usize = out
                .iter()
                .map(|o| match o {
                    Out::Frame(f) => f.capacity(),
                    Out::Oversized(_) => 0,
                })
                .sum::<usize>()
                + out.capacity() * std::mem::size_of::<Out>();
            let live = LIVE.load(Ordering::Relaxed).saturating_sub(before).saturating_sub(held);
            // Vec growth may double, hence 2x; 8192 is the initial buffer capacity.
            let bound = 8192.max(2 * (MAX_FRAME + 2 + largest_read)) + OVERSIZED_PREFIX + 1024;
            assert!(
                live <= bound,
                "decoder holds {live} bytes after {fed} fed (largest read {largest_read}, bound {bound})"
            );
        }
    }
    let split_discarded = d.discarded();
    let split_in_frame = d.in_frame();
    drop(d);

    // The same stream in one read.
    let mut whole = Vec::with_capacity(payload.len() * repeats);
    for _ in 0..repeats {
        whole.extend_from_slice(payload);
    }
    let mut d = MllpDecoder::new(MAX_FRAME);
    d.extend(&whole);
    let mut once = Vec::new();
    while let Some(item) = d.decode() {
        once.push(check(&item).0);
    }
    assert_eq!(out, once, "frames depend on how the stream was split");
    assert_eq!(split_discarded, d.discarded(), "discarded count depends on the split");
    assert_eq!(split_in_frame, d.in_frame(), "in_frame depends on the split");
});
