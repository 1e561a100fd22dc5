//! Field encryption at rest: AES-256-GCM with a key ring. Every PHI value the stores write
//! (event records, alert records, raw messages) passes through [`KeyRing::seal`] on its way to
//! disk and [`KeyRing::open`] on its way back.
//!
//! Sealed format: `format | key id (u32 BE) | nonce (12 bytes, random) | ciphertext + tag`.
//! Format `0x01`: the ciphertext is the plaintext's. Format `0x02`: it is the plaintext
//! compressed (a zstd frame), for values of [`COMPRESS_FROM`] bytes or more that compression
//! shrinks — an event row or a raw message is JSON or HL7 text, about a third of its size
//! compressed, and encrypted bytes no longer compress, so the store engines' own compression
//! cannot do it. Format `0x03` (what is written now): compressed with the rows dictionary
//! [`ROWS_DICTIONARY`], zstd's dictionary of what rows hold (HL7 segments, MDC and LOINC codes,
//! the stored events' JSON keys); a row of a few hundred bytes shares little with itself, so a
//! dictionary is what makes it small, and matching against one is faster than building a
//! row's own entropy tables (docs/BENCHMARKS.md, issue 14). Every format is read; the format
//! byte is bound into the associated data, so it cannot be flipped. Format 2 is no longer
//! written (only its test writes it). Compressing before encrypting lets a value's length say
//! a little about its content; these are rows at rest, no attacker mixes chosen text into them
//! and watches lengths, so the bytes saved (on disk and in every fsync) are worth it.
//! The associated data binds a ciphertext to its table, row key and column, so a value copied
//! into another row or column fails to decrypt instead of being read as someone else's data.
//!
//! The ring file holds one `<id> <64 hex>` line per key; the highest id is the active one
//! (`vigil keys rotate` appends a line). Old keys stay to decrypt what they sealed. The file
//! never lives in the data directory (see `docs/storage.md`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};

use super::CryptoError;

const FORMAT_V1: u8 = 1;
/// Compressed (zstd), then encrypted.
const FORMAT_V2: u8 = 2;
/// Compressed (zstd with [`ROWS_DICTIONARY`]), then encrypted.
const FORMAT_V3: u8 = 3;
/// The dictionary of format 3, part of the format: rows sealed with it open only with it, so
/// it never changes (`the_rows_dictionary_is_the_one_format_3_was_written_with`). A better one is
/// a new format beside this one; `store::dictionary` trains one from synthetic rows.
pub const ROWS_DICTIONARY: &[u8] = include_bytes!("rows-v3.dict");
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// AES-GCM's authentication tag, after the ciphertext.
const TAG_LEN: usize = 16;

/// Where a sealed value sits: the associated data of its ciphertext.
#[derive(Clone, Copy, Debug)]
pub struct Aad<'a> {
    /// Table or keyspace name.
    pub table: &'a str,
    /// The row's key bytes.
    pub key: &'a [u8],
    /// Column name (`record` when the whole value is sealed).
    pub column: &'a str,
}

/// Plaintexts this long or longer are compressed when that makes them shorter.
pub const COMPRESS_FROM: usize = 256;
/// zstd's level: its fastest standard level; on the rows of a PCD-01 message it saves nearly
/// what level 3 does (docs/BENCHMARKS.md, issue 14).
const ZSTD_LEVEL: i32 = 1;
/// The most a compressed value may expand to when opened (a guard: values are authenticated,
/// so only this server wrote them).
const MAX_OPENED: usize = 256 << 20;

/// The rows dictionary digested once for compressing and once for expanding (each thread's
/// context refers to these).
static ENCODER_DICTIONARY: std::sync::LazyLock<zstd::dict::EncoderDictionary<'static>> =
    std::sync::LazyLock::new(|| zstd::dict::EncoderDictionary::copy(ROWS_DICTIONARY, ZSTD_LEVEL));
static DECODER_DICTIONARY: std::sync::LazyLock<zstd::dict::DecoderDictionary<'static>> =
    std::sync::LazyLock::new(|| zstd::dict::DecoderDictionary::copy(ROWS_DICTIONARY));

type Compressor = zstd::bulk::Compressor<'static>;
type Decompressor = zstd::bulk::Decompressor<'static>;

thread_local! {
    /// Compression contexts per thread and format: making one is far dearer than compressing
    /// a row.
    static COMPRESSOR: std::cell::RefCell<Option<Compressor>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<Decompressor>> = const { std::cell::RefCell::new(None) };
    static DICT_DECOMPRESSOR: std::cell::RefCell<Option<Decompressor>> = const { std::cell::RefCell::new(None) };
}

/// A format 3 compressor: the dictionary's id is left out of each frame (the format names it).
fn dictionary_compressor() -> std::io::Result<Compressor> {
    let mut compressor = Compressor::with_prepared_dictionary(&ENCODER_DICTIONARY)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::DictIdFlag(false))?;
    Ok(compressor)
}

/// `plaintext` compressed as `format` (2: on its own; 3: with the rows dictionary) into `out`
/// after what it holds, when it is long enough and compression makes it shorter; whether it was.
/// The space offered is one byte short of the plaintext, so a frame that would not be shorter
/// fails instead of being written.
fn compress_into(format: u8, plaintext: &[u8], out: &mut Vec<u8>) -> bool {
    if plaintext.len() < COMPRESS_FROM {
        return false;
    }
    let start = out.len();
    out.resize(start + plaintext.len() - 1, 0);
    let written = if format == FORMAT_V3 {
        with_context(&COMPRESSOR, dictionary_compressor, |c| c.compress_to_buffer(plaintext, &mut out[start..]))
    } else {
        zstd::bulk::compress_to_buffer(plaintext, &mut out[start..], ZSTD_LEVEL)
    };
    match written {
        Ok(n) => {
            out.truncate(start + n);
            true
        }
        Err(_) => {
            out.truncate(start);
            false
        }
    }
}

/// `f` with this thread's context in `cell`, made by `make` on first use.
fn with_context<C: 'static, T>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Option<C>>>,
    make: impl FnOnce() -> std::io::Result<C>,
    f: impl FnOnce(&mut C) -> std::io::Result<T>,
) -> std::io::Result<T> {
    cell.with(|cell| {
        let mut cell = cell.borrow_mut();
        let context = match cell.as_mut() {
            Some(context) => context,
            None => cell.insert(make()?),
        };
        f(context)
    })
}

fn decompress(format: u8, compressed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let bad = |what: &str| CryptoError::Open(format!("compressed value: {what}"));
    let size = zstd::zstd_safe::get_frame_content_size(compressed)
        .map_err(|_| bad("not a zstd frame"))?
        .ok_or_else(|| bad("no content size"))?;
    let size = usize::try_from(size).ok().filter(|s| *s <= MAX_OPENED).ok_or_else(|| bad("too large"))?;
    let out = if format == FORMAT_V3 {
        with_context(
            &DICT_DECOMPRESSOR,
            || Decompressor::with_prepared_dictionary(&DECODER_DICTIONARY),
            |d| d.decompress(compressed, size),
        )
    } else {
        with_context(&DECOMPRESSOR, Decompressor::new, |d| d.decompress(compressed, size))
    };
    let out = out.map_err(|e| bad(&e.to_string()))?;
    if out.len() == size { Ok(out) } else { Err(bad("length differs from its header")) }
}

impl Aad<'_> {
    fn encode(&self, format: u8) -> Vec<u8> {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") never collide. The format is bound
        // too (`vigil/v1`, `vigil/v2`, `vigil/v3`): a compressed value never opens as a plain one,
        // nor with the other compression.
        let mut out = Vec::with_capacity(16 + self.table.len() + self.key.len() + self.column.len());
        out.extend_from_slice(b"vigil/v");
        out.push(b'0' + format);
        for part in [self.table.as_bytes(), self.key, self.column.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }
}

/// The field-encryption keys: one cipher per key, built once at load time.
pub struct KeyRing {
    active: u32,
    ciphers: BTreeMap<u32, Aes256Gcm>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("active", &self.active).field("keys", &self.ciphers.len()).finish()
    }
}

impl KeyRing {
    /// A ring from `(id, key)` pairs; the highest id is active.
    pub fn from_keys(keys: &[(u32, [u8; 32])]) -> Result<Self, CryptoError> {
        let mut ciphers = BTreeMap::new();
        for (id, key) in keys {
            let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::Malformed("key ring".into()))?;
            if ciphers.insert(*id, cipher).is_some() {
                return Err(CryptoError::Malformed(format!("key ring: key id {id} appears twice")));
            }
        }
        let active = *ciphers.keys().next_back().ok_or_else(|| CryptoError::Malformed("key ring is empty".into()))?;
        Ok(KeyRing { active, ciphers })
    }

    /// Read the ring file at `path`, creating it (mode 0600) with one random key if absent.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        if !path.exists() {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_error(path))?;
            }
            let key: [u8; 32] = rand::random();
            super::write_private(path, &render(&[(1, key)])).map_err(io_error(path))?;
        }
        Self::from_keys(&read_ring(path)?)
    }

    /// The id new values are sealed with.
    pub fn active_id(&self) -> u32 {
        self.active
    }

    /// Every key id, oldest first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.ciphers.keys().copied().collect()
    }

    /// Encrypt `plaintext` (compressed first when that shortens it: see the module's doc) with
    /// the active key and a fresh random nonce.
    pub fn seal(&self, aad: Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seal_compressed(FORMAT_V3, aad, plaintext)
    }

    /// [`KeyRing::seal`] compressed as `format` (2 or 3), or plain (1) when that is no shorter:
    /// written and encrypted in one buffer (header, then the text, then the tag).
    fn seal_compressed(&self, format: u8, aad: Aad<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = self.ciphers.get(&self.active).ok_or(CryptoError::Seal)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(format);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&nonce);
        if !compress_into(format, plaintext, &mut out) {
            out[0] = FORMAT_V1;
            out.extend_from_slice(plaintext);
        }
        let aad = aad.encode(out[0]);
        let tag = cipher
            .encrypt_inout_detached(&nonce.into(), &aad, (&mut out[HEADER_LEN..]).into())
            .map_err(|_| CryptoError::Seal)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// `msg` sealed as `format` the way builds before the one-buffer seal wrote it (a separate
    /// ciphertext and tag from `Aead::encrypt`): rows an older build wrote must still open.
    #[cfg(test)]
    fn seal_as(&self, format: u8, aad: Aad<'_>, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let cipher = self.ciphers.get(&self.active).ok_or(CryptoError::Seal)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = aad.encode(format);
        let sealed = cipher.encrypt(&nonce.into(), Payload { msg, aad: &aad }).map_err(|_| CryptoError::Seal)?;
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.push(format);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Decrypt a value sealed by [`KeyRing::seal`] with any key of the ring (and expand it,
    /// when it was compressed).
    pub fn open(&self, aad: Aad<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let format = sealed.first().copied();
        if sealed.len() < HEADER_LEN || !matches!(format, Some(FORMAT_V1 | FORMAT_V2 | FORMAT_V3)) {
            return Err(CryptoError::Open("not a sealed value".into()));
        }
        let format = sealed[0];
        let id = u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]);
        let cipher = self.ciphers.get(&id).ok_or_else(|| CryptoError::Open(format!("unknown key id {id}")))?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[5..HEADER_LEN]);
        let aad = aad.encode(format);
        let opened = cipher
            .decrypt(&nonce.into(), Payload { msg: &sealed[HEADER_LEN..], aad: &aad })
            .map_err(|_| CryptoError::Open("authentication failed (wrong key, row or column)".into()))?;
        if format == FORMAT_V1 { Ok(opened) } else { decompress(format, &opened) }
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> CryptoError + '_ {
    move |source| CryptoError::Io { path: path.display().to_string(), source }
}

fn render(keys: &[(u32, [u8; 32])]) -> String {
    let mut text = String::from(
        "# vigil field-encryption key ring: <key id> <hex key>; the highest id is active.\n# Keep this file outside the data directory and back it up separately.\n",
    );
    for (id, key) in keys {
        text.push_str(&format!("{id} {}\n", hex::encode(key)));
    }
    text
}

fn read_ring(path: &Path) -> Result<Vec<(u32, [u8; 32])>, CryptoError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let malformed =
        |line: usize| CryptoError::Malformed(format!("{} line {line}: expected `<id> <64 hex>`", path.display()));
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, key) = line.split_once(char::is_whitespace).ok_or_else(|| malformed(n + 1))?;
        let id: u32 = id.parse().map_err(|_| malformed(n + 1))?;
        let key: [u8; 32] =
            hex::decode(key.trim()).ok().and_then(|b| b.try_into().ok()).ok_or_else(|| malformed(n + 1))?;
        keys.push((id, key));
    }
    Ok(keys)
}

/// Add a new active key to the ring at `path` (created when absent); returns its id. The file
/// is replaced atomically (write to a temporary file, fsync, rename).
pub fn rotate(path: &Path) -> Result<u32, CryptoError> {
    let mut keys = if path.exists() { read_ring(path)? } else { Vec::new() };
    let id = keys.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
    keys.push((id, rand::random()));
    KeyRing::from_keys(&keys)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(path))?;
    }
    let tmp: PathBuf = path.with_extension(format!("tmp-{}", rand::random::<u32>()));
    super::write_private(&tmp, &render(&keys)).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error(path))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAD: Aad<'static> = Aad { table: "events", key: b"p1", column: "record" };

    #[test]
    fn seals_with_random_nonces_and_binds_table_key_and_column() {
        let ring = KeyRing::from_keys(&[(1, [7; 32])]).unwrap();
        let a = ring.seal(AAD, b"Quartermaine^Zebulon").unwrap();
        let b = ring.seal(AAD, b"Quartermaine^Zebulon").unwrap();
        assert_ne!(a, b, "a fresh nonce per value");
        assert_eq!(ring.open(AAD, &a).unwrap(), b"Quartermaine^Zebulon");
        for other in [Aad { table: "alerts", ..AAD }, Aad { key: b"p2", ..AAD }, Aad { column: "raw", ..AAD }] {
            assert!(ring.open(other, &a).is_err(), "{other:?}");
        }
        let mut tampered = a.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(ring.open(AAD, &tampered).is_err());
        assert!(!a.windows(7).any(|w| w == b"Zebulon"));
    }

    #[test]
    fn rotation_adds_an_active_key_and_old_keys_still_decrypt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let path = dir.join("field.keys");
        let first = KeyRing::load_or_create(&path).unwrap();
        assert_eq!(first.active_id(), 1);
        let old = first.seal(AAD, b"old").unwrap();
        assert_eq!(rotate(&path).unwrap(), 2);
        let second = KeyRing::load_or_create(&path).unwrap();
        assert_eq!(second.key_ids(), vec![1, 2]);
        let new = second.seal(AAD, b"new").unwrap();
        assert_eq!(u32::from_be_bytes(new[1..5].try_into().unwrap()), 2, "the format carries the key id");
        assert_eq!(second.open(AAD, &old).unwrap(), b"old");
        assert_eq!(second.open(AAD, &new).unwrap(), b"new");
        assert!(first.open(AAD, &new).is_err(), "a ring without key 2 cannot read it");
        let long =
            "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.150456|97|262688^MDC_DIM_PERCENT^MDC|||||R\r".repeat(8);
        assert_eq!(
            second.open(AAD, &first.seal(AAD, long.as_bytes()).unwrap()).unwrap(),
            long.as_bytes(),
            "compressed too"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "1 abc\n").unwrap();
        assert!(matches!(KeyRing::load_or_create(&path), Err(CryptoError::Malformed(_))));
    }

    /// A row of a PCD-01 message's size is stored compressed (the bytes every fsync and every
    /// compaction carry), opens to the same bytes, and still opens when it was written by a
    /// build that did not compress (format 1) or compressed without the dictionary (format
    /// 2); the format byte cannot be flipped.
    #[test]
    fn long_values_are_compressed_before_sealing_and_plain_ones_still_open() {
        let ring = KeyRing::from_keys(&[(1, [7; 32])]).unwrap();
        let row = format!(
            "{{\"patient_id\":\"p-000123\",\"observations\":[{}]}}",
            (0..8)
                .map(|i| format!("{{\"name\":\"hr{i}\",\"value\":{},\"unit\":\"/min\",\"source_code\":\"MDC|147842\",\"observed_at\":\"2026-12-03T04:00:0{i}Z\"}}", 60 + i))
                .collect::<Vec<_>>()
                .join(",")
        );
        let sealed = ring.seal(AAD, row.as_bytes()).unwrap();
        assert_eq!(sealed[0], FORMAT_V3);
        assert!(sealed.len() < row.len() / 2, "{} sealed bytes for {} of JSON", sealed.len(), row.len());
        assert_eq!(ring.open(AAD, &sealed).unwrap(), row.as_bytes());

        let alone = ring.seal_compressed(FORMAT_V2, AAD, row.as_bytes()).unwrap();
        assert_eq!(alone[0], FORMAT_V2);
        assert!(alone.len() < row.len() / 2, "{} sealed bytes for {} of JSON", alone.len(), row.len());
        assert_eq!(ring.open(AAD, &alone).unwrap(), row.as_bytes(), "a row the previous build wrote");

        let plain = ring.seal_as(FORMAT_V1, AAD, row.as_bytes()).unwrap();
        assert_eq!(ring.open(AAD, &plain).unwrap(), row.as_bytes(), "a row an older build wrote");

        for value in [&sealed, &alone, &plain] {
            for other in [FORMAT_V1, FORMAT_V2, FORMAT_V3].into_iter().filter(|f| *f != value[0]) {
                let mut flipped = value.clone();
                flipped[0] = other;
                assert!(ring.open(AAD, &flipped).is_err(), "format {} forged as {other}", value[0]);
            }
        }
        // Short values, and those compression would not shrink, stay plain.
        assert_eq!(ring.seal(AAD, b"Quartermaine^Zebulon").unwrap()[0], FORMAT_V1);
        let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        let sealed = ring.seal(AAD, &noise).unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert_eq!(ring.open(AAD, &sealed).unwrap(), noise);
    }

    /// Rows sealed in format 3 open only with the dictionary they were compressed with: the
    /// shipped one is pinned (a retrained dictionary is a new format, `store::dictionary`).
    #[test]
    fn the_rows_dictionary_is_the_one_format_3_was_written_with() {
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(ROWS_DICTIONARY)),
            "d200b82bcb5fa32a4efff904217550a8e356def74b59f2302e8dbd8a8bc7613b"
        );
    }
}
