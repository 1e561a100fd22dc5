//! MLLP framing (`0x0B` message `0x1C 0x0D`), apart from parsing: the decoder only finds frame
//! boundaries in a bounded buffer. Bytes outside frames are discarded and counted; a frame
//! larger than the limit is skipped to its end and reported so the listener can answer AR.

/// Start of block.
pub const SB: u8 = 0x0B;
/// End of block.
pub const EB: u8 = 0x1C;
/// Carriage return after the end of block.
pub const CR: u8 = 0x0D;

/// How much of an oversized frame is kept, enough to read its MSH for the AR.
const OVERSIZED_PREFIX: usize = 4096;

/// What the decoder found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame's payload.
    Frame(Vec<u8>),
    /// A frame over the limit: its first bytes and its full length.
    Oversized {
        /// The first bytes of the payload.
        prefix: Vec<u8>,
        /// Its length.
        len: usize,
    },
}

/// Incremental MLLP decoder over a buffer the caller fills.
#[derive(Debug)]
pub struct MllpDecoder {
    max_frame: usize,
    buf: Vec<u8>,
    /// Discarding an oversized frame: what we kept of it and how long it is so far.
    skipping: Option<(Vec<u8>, usize)>,
    discarded: u64,
}

impl MllpDecoder {
    /// A decoder accepting frames up to `max_frame` payload bytes.
    pub fn new(max_frame: usize) -> Self {
        MllpDecoder { max_frame, buf: Vec::with_capacity(8192), skipping: None, discarded: 0 }
    }

    /// Bytes seen outside any frame so far.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Whether a frame has started but not ended (for an orderly close).
    pub fn in_frame(&self) -> bool {
        self.skipping.is_some() || self.buf.first() == Some(&SB)
    }

    /// Feed bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete item, if the buffer holds one. Memory stays bounded by the frame
    /// limit plus one read, whatever the peer sends.
    pub fn decode(&mut self) -> Option<Decoded> {
        if let Some((prefix, len)) = self.skipping.as_mut() {
            match find_end(&self.buf, 0) {
                Some(end) => {
                    let total = *len + end;
                    let prefix = std::mem::take(prefix);
                    self.skipping = None;
                    self.buf.drain(..end + 2);
                    return Some(Decoded::Oversized { prefix, len: total });
                }
                None => {
                    // Keep a trailing 0x1C: its 0x0D may be in the next read.
                    let keep = usize::from(self.buf.last() == Some(&EB));
                    let consumed = self.buf.len() - keep;
                    *len += consumed;
                    self.buf.drain(..consumed);
                    return None;
                }
            }
        }
        let start = match self.buf.iter().position(|&b| b == SB) {
            Some(start) => start,
            None => {
                self.discarded += self.buf.len() as u64;
                self.buf.clear();
                return None;
            }
        };
        if start > 0 {
            self.discarded += start as u64;
            self.buf.drain(..start);
        }
        match find_end(&self.buf, 1) {
            Some(end) if end - 1 > self.max_frame => {
                let prefix = self.buf[1..(1 + OVERSIZED_PREFIX).min(end)].to_vec();
                self.buf.drain(..end + 2);
                Some(Decoded::Oversized { prefix, len: end - 1 })
            }
            Some(end) => {
                let frame = self.buf[1..end].to_vec();
                self.buf.drain(..end + 2);
                Some(Decoded::Frame(frame))
            }
            None if self.buf.len() - 1 > self.max_frame => {
                // A trailing 0x1C may be the first half of the end marker: it stays in the
                // buffer, and so out of both the prefix and the length (found by fuzzing).
                let keep = usize::from(self.buf.last() == Some(&EB));
                let consumed = self.buf.len() - keep;
                let prefix = self.buf[1..1 + OVERSIZED_PREFIX.min(consumed - 1)].to_vec();
                self.skipping = Some((prefix, consumed - 1));
                self.buf.drain(..consumed);
                None
            }
            None => None,
        }
    }
}

/// Index of the `0x1C` of the first `0x1C 0x0D` at or after `from`. memchr jumps to each
/// `0x1C` (one per frame, in practice): a byte-pair scan cost about 6 instructions a byte.
fn find_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    memchr::memchr_iter(EB, tail).find(|&i| tail.get(i + 1) == Some(&CR)).map(|i| i + from)
}

/// Wrap a payload in an MLLP frame.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    frame_into(&mut out, payload);
    out
}

/// [`frame`], appended to `out` (several frames in one write).
pub fn frame_into(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(SB);
    out.extend_from_slice(payload);
    out.extend_from_slice(&[EB, CR]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(d: &mut MllpDecoder) -> Vec<Decoded> {
        std::iter::from_fn(|| d.decode()).collect()
    }

    #[test]
    fn frames_split_joined_and_surrounded_by_noise() {
        let mut d = MllpDecoder::new(1024);
        let mut bytes = b"noise".to_vec();
        bytes.extend(frame(b"MSH|one"));
        bytes.extend(b"\r\n");
        bytes.extend(frame(b"MSH|two"));
        for chunk in bytes.chunks(3) {
            d.extend(chunk);
        }
        assert_eq!(all(&mut d), vec![Decoded::Frame(b"MSH|one".to_vec()), Decoded::Frame(b"MSH|two".to_vec())]);
        assert_eq!(d.discarded(), 7);
    }

    #[test]
    fn oversized_frames_are_skipped_and_reported_then_decoding_resumes() {
        let mut d = MllpDecoder::new(1024);
        let big = vec![b'x'; 10_000];
        let mut bytes = frame(&big);
        bytes.extend(frame(b"MSH|after"));
        let mut out = Vec::new();
        for chunk in bytes.chunks(700) {
            d.extend(chunk);
            out.extend(all(&mut d));
            assert!(d.buf.len() <= 1024 + 700 + 2, "buffer stays bounded");
        }
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], Decoded::Oversized { len: 10_000, prefix } if prefix.len() >= 1024 && prefix.len() <= OVERSIZED_PREFIX),
            "{:?}",
            out[0]
        );
        assert_eq!(out[1], Decoded::Frame(b"MSH|after".to_vec()));
    }

    #[test]
    fn an_end_marker_split_across_reads_of_an_oversized_frame_stays_out_of_its_prefix() {
        let mut d = MllpDecoder::new(1024);
        let mut first = vec![SB];
        first.extend(std::iter::repeat_n(b'x', 1077));
        first.push(EB);
        d.extend(&first);
        assert_eq!(d.decode(), None);
        d.extend(&[CR]);
        let Some(Decoded::Oversized { prefix, len }) = d.decode() else { panic!("expected oversized") };
        assert_eq!(len, 1077);
        assert!(prefix.len() <= len && !prefix.contains(&EB), "prefix {} of a {len} byte frame", prefix.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]
        #[test]
        fn never_panics_and_stays_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let mut d = MllpDecoder::new(1024);
            for c in &chunks {
                d.extend(c);
                while d.decode().is_some() {}
                prop_assert!(d.buf.len() <= 1024 + 300 + 2);
            }
        }

        #[test]
        fn the_end_marker_is_the_first_0x1c_0x0d_pair(
            buf in proptest::collection::vec(proptest::sample::select(vec![EB, CR, SB, b'A']), 0..40),
            from in 0usize..42,
        ) {
            let pairwise = buf.get(from..).and_then(|t| t.windows(2).position(|w| w == [EB, CR])).map(|p| p + from);
            prop_assert_eq!(find_end(&buf, from), pairwise);
        }

        #[test]
        fn any_payload_without_terminator_round_trips(payload in proptest::collection::vec(any::<u8>(), 0..1000), split in 0usize..1003) {
            prop_assume!(!payload.windows(2).any(|w| w == [EB, CR]));
            let bytes = frame(&payload);
            let split = split.min(bytes.len());
            let mut d = MllpDecoder::new(4096);
            d.extend(&bytes[..split]);
            let mut out = all(&mut d);
            d.extend(&bytes[split..]);
            out.extend(all(&mut d));
            prop_assert_eq!(out, vec![Decoded::Frame(payload)]);
        }
    }
}
