//! Escape sequences: `\\F\\`, `\\X..\\`, formatting commands, decoded on access.

use super::*;

/// Decodes HL7 escape sequences assuming a UTF-8 message (see `unescape_with`).
pub fn unescape<'a>(text: &'a str, d: &Delimiters) -> Cow<'a, str> {
    unescape_with(text, d, Charset::Utf8)
}

/// Decodes HL7 escape sequences in one leaf value.
///
/// - `\F\ \S\ \T\ \R\ \E\` become the delimiters, `\P\` the truncation char
///   (kept literally when none is declared).
/// - `\Xhh..\` is decoded as bytes of `charset`; bytes that are not valid
///   UTF-8 in a UTF-8/ASCII message are read as Latin-1 so nothing is lost.
///   Odd-length or non-hex content is kept literally.
/// - `\.br\` becomes `"\n"`; `\.sp\` one newline and `\.sp N\` N newlines
///   (at least 1, at most 64): Vigil stores text, not layout, so line breaks are
///   the only formatting worth keeping.
/// - `\H\ \N\ \.in\ \.ti\ \.sk\ \.ce\ \.fi\ \.nf\` (highlighting/layout) and
///   `\Cxxyy\ \Mxxyyzz\` (charset switches, which only matter for ISO 2022
///   sets we do not accept) are dropped.
/// - Unknown sequences and an unterminated escape are kept literally.
pub fn unescape_with<'a>(text: &'a str, d: &Delimiters, charset: Charset) -> Cow<'a, str> {
    // A byte search (memchr) where the escape character is ASCII, as it is in practice.
    let escaped =
        || if d.escape.is_ascii() { text.as_bytes().contains(&(d.escape as u8)) } else { text.contains(d.escape) };
    if !d.has_escape() || !escaped() {
        return Cow::Borrowed(text);
    }
    let esc = d.escape;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after)) = rest.split_once(esc) {
        out.push_str(before);
        match after.split_once(esc) {
            Some((seq, tail)) => {
                if !decode_sequence(seq, d, charset, &mut out) {
                    out.push(esc);
                    out.push_str(seq);
                    out.push(esc);
                }
                rest = tail;
            }
            None => {
                out.push(esc);
                rest = after;
                break;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Appends the meaning of one escape sequence; false when it is not a
/// sequence we recognise (the caller then keeps it literally).
pub(super) fn decode_sequence(seq: &str, d: &Delimiters, charset: Charset, out: &mut String) -> bool {
    let all_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    match seq {
        "F" => out.push(d.field),
        "S" => out.push(d.component),
        "T" => out.push(d.subcomponent),
        "R" => out.push(d.repetition),
        "E" => out.push(d.escape),
        "P" => match d.truncation {
            Some(t) => out.push(t),
            None => return false,
        },
        "H" | "N" => {}
        _ => {
            if let Some(hex) = seq.strip_prefix('X') {
                return decode_hex(hex, charset, out);
            }
            if let Some(code) = seq.strip_prefix('C') {
                return code.len() == 4 && all_hex(code);
            }
            if let Some(code) = seq.strip_prefix('M') {
                return (code.len() == 4 || code.len() == 6) && all_hex(code);
            }
            if let Some(cmd) = seq.strip_prefix('.') {
                return decode_formatting(cmd, out);
            }
            return false;
        }
    }
    true
}

pub(super) fn decode_hex(hex: &str, charset: Charset, out: &mut String) -> bool {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return false;
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks_exact(2) {
        let Some(b) = std::str::from_utf8(pair).ok().and_then(|p| u8::from_str_radix(p, 16).ok()) else {
            return false;
        };
        bytes.push(b);
    }
    match charset {
        Charset::Latin1 => out.push_str(&latin1(&bytes)),
        Charset::Utf8 | Charset::Ascii => out.push_str(&decode_auto(&bytes)),
    }
    true
}

pub(super) fn decode_formatting(cmd: &str, out: &mut String) -> bool {
    let (name, arg) = match (cmd.get(..2), cmd.get(2..)) {
        (Some(n), Some(a)) => (n, a.trim()),
        _ => return false,
    };
    let digits = arg.strip_prefix(['+', '-']).unwrap_or(arg);
    let arg_ok = arg.is_empty() || (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
    if !arg_ok {
        return false;
    }
    match name {
        "br" if arg.is_empty() => out.push('\n'),
        "sp" => {
            // Only overflow can make an all-digit argument fail to parse.
            let n = if digits.is_empty() { 1 } else { digits.parse::<usize>().unwrap_or(MAX_SP_LINES) };
            let n = n.clamp(1, MAX_SP_LINES);
            out.extend(std::iter::repeat_n('\n', n));
        }
        "in" | "ti" | "sk" => {}
        "ce" | "fi" | "nf" if arg.is_empty() => {}
        _ => return false,
    }
    true
}
