//! Streaming scanner for relayfile file objects (`GET /fs/file`) and JSON
//! exports (`GET /fs/export?format=json`).
//!
//! Design: a hand-written, pull-based JSON lexer over [`BufRead`] that never
//! materialises a whole value. String bodies are scanned in bulk with
//! `memchr2('"', '\\')`; the unescaped bytes of each run are handed to a
//! *sink* (monomorphised, so no per-byte calls):
//!
//! * metadata strings go to a capped buffer (64 KiB, [`MAX_META_LEN`]);
//! * unknown keys' values are skipped (iteratively, no recursion, no buffering);
//! * `content` goes straight to a decoder (text copy, or base64 with a carry of
//!   at most 3 chars plus trailing `=`) that fills a 64 KiB output buffer, which
//!   is hashed (SHA-256) and passed to [`ContentTarget::write`] when full.
//!   Large text runs bypass the buffer (hashed and written in place).
//!
//! If `content` arrives before `encoding` has been seen, the raw (unescaped)
//! bytes are spooled: first into a 64 KiB memory buffer, then (only if larger)
//! into a file obtained from the caller's `spool` callback. At the end of the
//! object the spool is replayed through the same decoder. Memory therefore
//! stays flat (~200 KiB of buffers plus the caller's `BufRead` buffer) whatever
//! the content size. Callers should give the reader a large buffer, e.g.
//! `BufReader::with_capacity(256 << 10, body)`.
//!
//! Per-entry problems (bad base64, hash mismatch, unknown encoding, missing or
//! oversized metadata, duplicate keys, wrongly typed metadata) never stop the
//! scan: the rest of the entry is still parsed (and checked for JSON syntax)
//! and the entry is reported as [`EntryOutcome::Bad`]. Syntax errors, a failing
//! or truncated body and local I/O failures abort with a [`ScanError`].
//!
//! Lenient points: raw bytes inside the JSON text are not UTF-8 validated for
//! `content` (they are the file bytes); metadata must be valid UTF-8 (else
//! `Bad`). Lone UTF-16 surrogates in `\u` escapes decode to U+FFFD (what
//! JavaScript's `Buffer.from(s, "utf8")` and Go's decoder do). Non-canonical
//! base64 trailing bits are accepted.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// Longest accepted metadata string (path, revision, contentHash, contentType, encoding), in bytes.
pub const MAX_META_LEN: usize = 64 * 1024;
/// Deepest nesting accepted inside skipped (unknown) values.
pub const MAX_SKIP_DEPTH: usize = 4096;
const OUT_CAP: usize = 64 * 1024;
const SPOOL_MEM_CAP: usize = 64 * 1024;
const SPOOL_IO_CAP: usize = 64 * 1024;

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Metadata of one file object, as seen so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub path: Option<String>,
    pub revision: Option<String>,
    pub content_hash: Option<String>,
    pub content_type: Option<String>,
    pub encoding: Option<String>,
}

/// Size and SHA-256 (lowercase hex) of the decoded content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub size: u64,
    pub sha256: String,
}

/// What the caller does with each object's content.
pub trait ContentTarget {
    /// E.g. a temp file handle. Dropped by the scanner if the entry turns out `Bad`.
    type Out;
    /// Called once per object when its content starts (or at object end for
    /// absent/null content, or when the content had to be spooled), with the
    /// metadata seen so far. Not called for entries already known to be bad.
    fn begin(&mut self, meta_so_far: &Meta) -> io::Result<Self::Out>;
    /// Decoded bytes, in order, in chunks of any size.
    fn write(&mut self, out: &mut Self::Out, decoded: &[u8]) -> io::Result<()>;
}

/// The result for one object.
/// What was wrong with a bad entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    /// The decoded bytes do not hash to `contentHash`.
    HashMismatch,
    /// The content cannot be decoded (unknown encoding, bad base64).
    Content,
    /// The entry itself is unusable (missing path, oversized or mistyped metadata).
    Entry,
}

#[derive(Debug)]
pub enum EntryOutcome<O> {
    Ok {
        meta: Meta,
        decoded: Decoded,
        out: O,
    },
    /// A per-entry problem; the caller quarantines it and the export goes on.
    Bad {
        meta: Meta,
        reason: String,
        kind: BadKind,
    },
}

/// A failure that ends the scan.
#[derive(Debug)]
pub enum ScanError {
    /// The body reader failed (connection cut).
    Read(io::Error),
    /// The body ended early (truncated).
    Eof,
    /// Malformed JSON at byte `offset` of the body.
    Syntax { offset: u64, msg: String },
    /// `ContentTarget::begin`/`write` or the spool failed: local disk problem.
    Local(io::Error),
    /// The `each` callback asked to stop.
    Stopped,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Read(e) => write!(f, "reading the body failed: {e}"),
            ScanError::Eof => f.write_str("body ended early (truncated JSON)"),
            ScanError::Syntax { offset, msg } => {
                write!(f, "malformed JSON at byte {offset}: {msg}")
            }
            ScanError::Local(e) => write!(f, "local I/O failed: {e}"),
            ScanError::Stopped => f.write_str("stopped by the caller"),
        }
    }
}

impl std::error::Error for ScanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ScanError::Read(e) | ScanError::Local(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads exactly one file object; only whitespace may follow it.
pub fn read_file_object<R: BufRead, T: ContentTarget>(
    r: R,
    target: &mut T,
    spool: impl FnMut() -> io::Result<File>,
) -> Result<EntryOutcome<T::Out>, ScanError> {
    let mut s = Scanner::new(r, spool);
    s.lx.skip_ws()?;
    s.lx.expect(b'{', "expected '{' (a file object)")?;
    let outcome = s.object(target)?;
    s.lx.skip_ws()?;
    s.lx.expect_eof()?;
    Ok(outcome)
}

/// Reads a JSON array of file objects, calling `each` per element as soon as
/// it ends. Returns the number of elements. Entries already handed to `each`
/// stay valid even if the scan fails later.
pub fn read_export<R: BufRead, T: ContentTarget>(
    r: R,
    target: &mut T,
    spool: impl FnMut() -> io::Result<File>,
    mut each: impl FnMut(EntryOutcome<T::Out>) -> ControlFlow<()>,
) -> Result<u64, ScanError> {
    let mut s = Scanner::new(r, spool);
    s.lx.skip_ws()?;
    s.lx.expect(b'[', "expected '[' (an export array)")?;
    s.lx.skip_ws()?;
    let mut n = 0u64;
    if s.lx.peek()? == Some(b']') {
        s.lx.bump();
    } else {
        loop {
            s.lx.skip_ws()?;
            s.lx.expect(b'{', "export elements must be objects")?;
            let outcome = s.object(target)?;
            n += 1;
            if each(outcome).is_break() {
                return Err(ScanError::Stopped);
            }
            s.lx.skip_ws()?;
            match s.lx.next()? {
                b',' => {}
                b']' => break,
                _ => return Err(s.lx.syntax_prev("expected ',' or ']' after an element")),
            }
        }
    }
    s.lx.skip_ws()?;
    s.lx.expect_eof()?;
    Ok(n)
}

// ---------------------------------------------------------------------------
// Lexer

/// Receives unescaped string bytes.
trait Sink {
    fn bytes(&mut self, b: &[u8]) -> Result<(), ScanError>;
}

struct Skip;
impl Sink for Skip {
    #[inline]
    fn bytes(&mut self, _: &[u8]) -> Result<(), ScanError> {
        Ok(())
    }
}

/// Collects up to `MAX_META_LEN` bytes; remembers whether there were more.
#[derive(Default)]
struct MetaSink {
    buf: Vec<u8>,
    over: bool,
}
impl Sink for MetaSink {
    fn bytes(&mut self, b: &[u8]) -> Result<(), ScanError> {
        if self.buf.len() + b.len() > MAX_META_LEN {
            self.over = true;
        } else if !self.over {
            self.buf.extend_from_slice(b);
        }
        Ok(())
    }
}

/// Object keys: only short ones can be known keys.
#[derive(Default)]
struct KeySink {
    buf: [u8; 16],
    len: usize,
    over: bool,
}
impl Sink for KeySink {
    fn bytes(&mut self, b: &[u8]) -> Result<(), ScanError> {
        if self.len + b.len() > self.buf.len() {
            self.over = true;
        } else {
            self.buf[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
        }
        Ok(())
    }
}

struct Lexer<R> {
    r: R,
    pos: u64,
}

#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

#[inline]
fn has_ctrl(b: &[u8]) -> bool {
    // Branch-free fold so that it vectorises.
    b.iter().fold(false, |acc, &c| acc | (c < 0x20))
}

impl<R: BufRead> Lexer<R> {
    #[inline]
    fn fill(&mut self) -> Result<&[u8], ScanError> {
        loop {
            match self.r.fill_buf() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ScanError::Read(e)),
            }
        }
        self.r.fill_buf().map_err(ScanError::Read)
    }

    #[inline]
    fn consume(&mut self, n: usize) {
        self.r.consume(n);
        self.pos += n as u64;
    }

    #[inline]
    fn peek(&mut self) -> Result<Option<u8>, ScanError> {
        Ok(self.fill()?.first().copied())
    }

    /// Consumes one byte that `peek` has shown to exist.
    #[inline]
    fn bump(&mut self) {
        self.consume(1);
    }

    /// Next byte; end of input is `Eof`.
    #[inline]
    fn next(&mut self) -> Result<u8, ScanError> {
        match self.peek()? {
            Some(b) => {
                self.bump();
                Ok(b)
            }
            None => Err(ScanError::Eof),
        }
    }

    fn syntax_at(&self, offset: u64, msg: &str) -> ScanError {
        ScanError::Syntax {
            offset,
            msg: msg.to_string(),
        }
    }

    /// Syntax error about the byte just consumed.
    fn syntax_prev(&self, msg: &str) -> ScanError {
        self.syntax_at(self.pos.saturating_sub(1), msg)
    }

    fn expect(&mut self, want: u8, msg: &str) -> Result<(), ScanError> {
        if self.next()? == want {
            Ok(())
        } else {
            Err(self.syntax_prev(msg))
        }
    }

    fn expect_eof(&mut self) -> Result<(), ScanError> {
        match self.peek()? {
            None => Ok(()),
            Some(_) => Err(self.syntax_at(self.pos, "trailing data after the JSON value")),
        }
    }

    fn skip_ws(&mut self) -> Result<(), ScanError> {
        loop {
            let (n, all) = {
                let buf = self.fill()?;
                if buf.is_empty() {
                    return Ok(());
                }
                let n = buf.iter().position(|&b| !is_ws(b)).unwrap_or(buf.len());
                (n, n == buf.len())
            };
            self.consume(n);
            if !all {
                return Ok(());
            }
        }
    }

    fn literal(&mut self, rest: &[u8]) -> Result<(), ScanError> {
        for &want in rest {
            if self.next()? != want {
                return Err(self.syntax_prev("invalid literal"));
            }
        }
        Ok(())
    }

    fn digits(&mut self, at_least_one: bool) -> Result<(), ScanError> {
        let mut seen = false;
        while let Some(b) = self.peek()? {
            if !b.is_ascii_digit() {
                break;
            }
            self.bump();
            seen = true;
        }
        if at_least_one && !seen {
            if self.peek()?.is_none() {
                return Err(ScanError::Eof);
            }
            return Err(self.syntax_at(self.pos, "expected a digit"));
        }
        Ok(())
    }

    /// A JSON number whose first byte (`-` or a digit) was consumed.
    fn number(&mut self, first: u8) -> Result<(), ScanError> {
        let lead = if first == b'-' { self.next()? } else { first };
        match lead {
            b'0' => {}
            b'1'..=b'9' => self.digits(false)?,
            _ => return Err(self.syntax_prev("invalid number")),
        }
        if self.peek()? == Some(b'.') {
            self.bump();
            self.digits(true)?;
        }
        if matches!(self.peek()?, Some(b'e' | b'E')) {
            self.bump();
            if matches!(self.peek()?, Some(b'+' | b'-')) {
                self.bump();
            }
            self.digits(true)?;
        }
        Ok(())
    }

    /// The body of a string whose opening quote was consumed, unescaped into `sink`.
    #[inline]
    fn string<S: Sink>(&mut self, sink: &mut S) -> Result<(), ScanError> {
        loop {
            let pos = self.pos;
            // Scan the whole buffered run; single-char escapes that are
            // entirely in the buffer are handled inline, everything else
            // (`\u`, escapes split across refills) goes to `escape`.
            let (adv, stop) = {
                let buf = self.fill()?;
                if buf.is_empty() {
                    return Err(ScanError::Eof);
                }
                let mut i = 0;
                loop {
                    let rest = &buf[i..];
                    let (seg, stop) = match memchr::memchr2(b'"', b'\\', rest) {
                        Some(j) => (&rest[..j], rest[j]),
                        None => (rest, 0),
                    };
                    if has_ctrl(seg) {
                        let j = seg.iter().position(|&c| c < 0x20).unwrap_or(0);
                        return Err(
                            self.syntax_at(pos + (i + j) as u64, "control character in string")
                        );
                    }
                    if !seg.is_empty() {
                        sink.bytes(seg)?;
                    }
                    i += seg.len();
                    let inline = if stop == b'\\' {
                        buf.get(i + 1).and_then(|&e| simple_escape(e))
                    } else {
                        None
                    };
                    if let Some(b) = inline {
                        sink.bytes(&[b])?;
                        i += 2;
                        continue;
                    }
                    break (i + (stop != 0) as usize, stop);
                }
            };
            self.consume(adv);
            match stop {
                b'"' => return Ok(()),
                b'\\' => self.escape(sink)?,
                _ => {}
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ScanError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let b = self.next()?;
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.syntax_prev("invalid \\u escape")),
            };
            v = v << 4 | d as u32;
        }
        Ok(v)
    }

    /// An escape whose backslash was consumed.
    #[cold]
    fn escape<S: Sink>(&mut self, sink: &mut S) -> Result<(), ScanError> {
        const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
        let mut c = self.next()?;
        'esc: loop {
            if let Some(byte) = simple_escape(c) {
                return sink.bytes(&[byte]);
            }
            match c {
                b'u' => {
                    let mut cp = self.hex4()?;
                    loop {
                        if (0xD800..0xDC00).contains(&cp) {
                            // High surrogate: a low one should follow as `\uXXXX`.
                            if self.peek()? != Some(b'\\') {
                                return sink.bytes(REPLACEMENT);
                            }
                            self.bump();
                            let c2 = self.next()?;
                            if c2 != b'u' {
                                sink.bytes(REPLACEMENT)?;
                                c = c2;
                                continue 'esc;
                            }
                            let lo = self.hex4()?;
                            if (0xDC00..0xE000).contains(&lo) {
                                let full = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                                return emit_char(sink, full);
                            }
                            sink.bytes(REPLACEMENT)?;
                            cp = lo;
                            continue;
                        }
                        return emit_char(sink, cp);
                    }
                }
                _ => return Err(self.syntax_prev("invalid escape")),
            }
        }
    }

    /// Skips one JSON value of any type, iteratively.
    fn skip_value(&mut self) -> Result<(), ScanError> {
        let mut stack: Vec<bool> = Vec::new(); // true = object
        'value: loop {
            self.skip_ws()?;
            match self.next()? {
                open @ (b'{' | b'[') => {
                    let is_obj = open == b'{';
                    self.skip_ws()?;
                    let close = if is_obj { b'}' } else { b']' };
                    if self.peek()? == Some(close) {
                        self.bump();
                    } else {
                        if stack.len() >= MAX_SKIP_DEPTH {
                            return Err(self.syntax_prev("nesting too deep"));
                        }
                        stack.push(is_obj);
                        if is_obj {
                            self.key_colon()?;
                        }
                        continue 'value;
                    }
                }
                b'"' => self.string(&mut Skip)?,
                b't' => self.literal(b"rue")?,
                b'f' => self.literal(b"alse")?,
                b'n' => self.literal(b"ull")?,
                c @ (b'-' | b'0'..=b'9') => self.number(c)?,
                _ => return Err(self.syntax_prev("expected a JSON value")),
            }
            // After a complete value: close containers or move to the next member.
            loop {
                let Some(&is_obj) = stack.last() else {
                    return Ok(());
                };
                self.skip_ws()?;
                match self.next()? {
                    b',' => {
                        if is_obj {
                            self.skip_ws()?;
                            self.key_colon()?;
                        }
                        continue 'value;
                    }
                    b'}' if is_obj => {
                        stack.pop();
                    }
                    b']' if !is_obj => {
                        stack.pop();
                    }
                    _ => return Err(self.syntax_prev("expected ',' or a closing bracket")),
                }
            }
        }
    }

    /// `"key" :` inside a skipped object.
    fn key_colon(&mut self) -> Result<(), ScanError> {
        self.expect(b'"', "expected a string key")?;
        self.string(&mut Skip)?;
        self.skip_ws()?;
        self.expect(b':', "expected ':'")
    }
}

#[inline]
fn simple_escape(e: u8) -> Option<u8> {
    Some(match e {
        b'"' => b'"',
        b'\\' => b'\\',
        b'/' => b'/',
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        _ => return None,
    })
}

fn emit_char<S: Sink>(sink: &mut S, cp: u32) -> Result<(), ScanError> {
    let ch = char::from_u32(cp).unwrap_or('\u{FFFD}'); // lone low surrogate
    let mut tmp = [0u8; 4];
    sink.bytes(ch.encode_utf8(&mut tmp).as_bytes())
}

// ---------------------------------------------------------------------------
// Content decoding

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Enc {
    Text,
    Base64,
}

fn classify_encoding(e: Option<&str>) -> Result<Enc, String> {
    match e {
        None => Ok(Enc::Text),
        Some(s)
            if s.is_empty()
                || s.eq_ignore_ascii_case("utf-8")
                || s.eq_ignore_ascii_case("utf8") =>
        {
            Ok(Enc::Text)
        }
        Some(s) if s.eq_ignore_ascii_case("base64") => Ok(Enc::Base64),
        Some(s) => Err(format!("unknown content encoding {s:?}")),
    }
}

/// Decodes content bytes into `buf`, hashing and writing it out when full.
struct DirectSink<'a, T: ContentTarget> {
    enc: Enc,
    buf: &'a mut [u8],
    len: usize,
    hasher: Sha256,
    size: u64,
    target: &'a mut T,
    out: &'a mut T::Out,
    /// Base64 carry (< 4 chars, all from the alphabet or invalid - checked on decode).
    carry: [u8; 4],
    ncarry: usize,
    /// Number of `=` seen; after the first one only `=` may follow.
    pad: usize,
    bad: Option<&'static str>,
}

impl<'a, T: ContentTarget> DirectSink<'a, T> {
    fn new(enc: Enc, buf: &'a mut [u8], target: &'a mut T, out: &'a mut T::Out) -> Self {
        DirectSink {
            enc,
            buf,
            len: 0,
            hasher: Sha256::new(),
            size: 0,
            target,
            out,
            carry: [0; 4],
            ncarry: 0,
            pad: 0,
            bad: None,
        }
    }

    #[inline]
    fn emit(&mut self, b: &[u8]) -> Result<(), ScanError> {
        self.hasher.update(b);
        self.size += b.len() as u64;
        self.target.write(self.out, b).map_err(ScanError::Local)
    }

    fn flush(&mut self) -> Result<(), ScanError> {
        if self.len > 0 {
            let n = self.len;
            self.len = 0;
            self.hasher.update(&self.buf[..n]);
            self.size += n as u64;
            self.target
                .write(self.out, &self.buf[..n])
                .map_err(ScanError::Local)?;
        }
        Ok(())
    }

    #[inline]
    fn push_text(&mut self, b: &[u8]) -> Result<(), ScanError> {
        if b.len() >= OUT_CAP / 2 {
            self.flush()?;
            return self.emit(b);
        }
        if self.len + b.len() > self.buf.len() {
            self.flush()?;
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }

    /// Decodes whole quads of `d` (no `=` in it) into the buffer.
    fn decode_quads(&mut self, mut d: &[u8]) -> Result<(), ScanError> {
        debug_assert!(d.len().is_multiple_of(4));
        while !d.is_empty() {
            if self.buf.len() - self.len < 3 {
                self.flush()?;
            }
            let quads = (d.len() / 4).min((self.buf.len() - self.len) / 3);
            let (chunk, rest) = d.split_at(quads * 4);
            match B64.decode_slice(chunk, &mut self.buf[self.len..self.len + quads * 3]) {
                Ok(n) => self.len += n,
                Err(_) => {
                    self.bad = Some("invalid base64 content");
                    return Ok(());
                }
            }
            d = rest;
        }
        Ok(())
    }

    fn push_b64(&mut self, s: &[u8]) -> Result<(), ScanError> {
        if self.pad > 0 {
            if s.iter().all(|&c| c == b'=') {
                self.pad += s.len();
            } else {
                self.bad = Some("invalid base64 content: data after padding");
            }
            return Ok(());
        }
        let (mut d, pad) = match memchr::memchr(b'=', s) {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, &s[s.len()..]),
        };
        if self.ncarry > 0 {
            let k = (4 - self.ncarry).min(d.len());
            self.carry[self.ncarry..self.ncarry + k].copy_from_slice(&d[..k]);
            self.ncarry += k;
            d = &d[k..];
            if self.ncarry == 4 {
                self.ncarry = 0;
                let quad = self.carry;
                self.decode_quads(&quad)?;
                if self.bad.is_some() {
                    return Ok(());
                }
            }
        }
        let whole = d.len() / 4 * 4;
        self.decode_quads(&d[..whole])?;
        if self.bad.is_some() {
            return Ok(());
        }
        let rest = &d[whole..];
        self.carry[self.ncarry..self.ncarry + rest.len()].copy_from_slice(rest);
        self.ncarry += rest.len();
        if !pad.is_empty() {
            if pad.iter().all(|&c| c == b'=') {
                self.pad = pad.len();
            } else {
                self.bad = Some("invalid base64 content: data after padding");
            }
        }
        Ok(())
    }

    /// Ends the content: decodes the base64 tail, flushes and hashes.
    fn finish(mut self) -> Result<(Decoded, Option<&'static str>), ScanError> {
        if self.enc == Enc::Base64 && self.bad.is_none() {
            let n = self.ncarry;
            let pad_ok = self.pad == 0 || self.pad + n == 4;
            if n == 1 || (n == 0 && self.pad > 0) || !pad_ok {
                self.bad = Some("invalid base64 content: bad length or padding");
            } else if n > 0 {
                let mut tmp = [0u8; 3];
                match B64.decode_slice(&self.carry[..n], &mut tmp) {
                    Ok(k) => self.push_text(&tmp[..k])?,
                    Err(_) => self.bad = Some("invalid base64 content"),
                }
            }
        }
        if self.bad.is_none() {
            self.flush()?;
        }
        let sha256 = hex::encode(self.hasher.finalize());
        Ok((
            Decoded {
                size: self.size,
                sha256,
            },
            self.bad,
        ))
    }
}

impl<T: ContentTarget> Sink for DirectSink<'_, T> {
    #[inline]
    fn bytes(&mut self, b: &[u8]) -> Result<(), ScanError> {
        if self.bad.is_some() {
            return Ok(());
        }
        match self.enc {
            Enc::Text => self.push_text(b),
            Enc::Base64 => self.push_b64(b),
        }
    }
}

/// Raw content spooled because `encoding` was not known yet.
struct SpoolSink<'a, F> {
    mem: &'a mut Vec<u8>,
    file: Option<BufWriter<File>>,
    spool_fn: &'a mut F,
}

impl<F: FnMut() -> io::Result<File>> Sink for SpoolSink<'_, F> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), ScanError> {
        if self.file.is_none() {
            if self.mem.len() + b.len() <= SPOOL_MEM_CAP {
                self.mem.extend_from_slice(b);
                return Ok(());
            }
            let f = (self.spool_fn)().map_err(ScanError::Local)?;
            let mut w = BufWriter::with_capacity(SPOOL_IO_CAP, f);
            w.write_all(self.mem).map_err(ScanError::Local)?;
            self.mem.clear();
            self.file = Some(w);
        }
        match &mut self.file {
            Some(w) => w.write_all(b).map_err(ScanError::Local),
            None => unreachable!(),
        }
    }
}

// ---------------------------------------------------------------------------
// Objects

enum Content<O> {
    /// No `content` key (yet), or `content: null`.
    Absent,
    /// Decoded directly while streaming.
    Direct { out: O, decoded: Decoded },
    /// Raw bytes in the scanner's memory spool.
    SpooledMem,
    /// Raw bytes in a spool file.
    SpooledFile(File),
    /// Skipped (entry already bad).
    Skipped,
}

struct Entry<O> {
    meta: Meta,
    bad: Option<String>,
    bad_kind: BadKind,
    /// Bit per known key, to reject duplicates.
    seen: u8,
    /// Encoding, once the `encoding` key was seen and understood.
    enc: Option<Enc>,
    content: Content<O>,
}

impl<O> Entry<O> {
    fn set_bad(&mut self, reason: impl Into<String>) {
        self.set_bad_kind(BadKind::Entry, reason)
    }

    fn set_bad_kind(&mut self, kind: BadKind, reason: impl Into<String>) {
        if self.bad.is_none() {
            self.bad_kind = kind;
            self.bad = Some(reason.into());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Path = 0,
    Revision,
    ContentHash,
    ContentType,
    Encoding,
    Content,
}

impl Key {
    fn of(k: &KeySink) -> Option<Key> {
        if k.over {
            return None;
        }
        Some(match &k.buf[..k.len] {
            b"path" => Key::Path,
            b"revision" => Key::Revision,
            b"contentHash" => Key::ContentHash,
            b"contentType" => Key::ContentType,
            b"encoding" => Key::Encoding,
            b"content" => Key::Content,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Key::Path => "path",
            Key::Revision => "revision",
            Key::ContentHash => "contentHash",
            Key::ContentType => "contentType",
            Key::Encoding => "encoding",
            Key::Content => "content",
        }
    }
}

enum MetaVal {
    Str(String),
    Null,
    Bad(String),
}

struct Scanner<R, F> {
    lx: Lexer<R>,
    spool_fn: F,
    /// Decoder output buffer.
    out: Box<[u8]>,
    /// Memory spool, then read buffer for replaying a spool file.
    spool_mem: Vec<u8>,
}

thread_local! {
    /// The decoder output buffer of the last scanner that ran on this thread, reused by the next one:
    /// a file fetch scans one small object, and a fresh zeroed 64 KiB buffer per file cost more than
    /// the scan itself (zeroing plus page faults after the allocator returned it to the kernel).
    static OUT_POOL: std::cell::Cell<Option<Box<[u8]>>> = const { std::cell::Cell::new(None) };
}

impl<R, F> Drop for Scanner<R, F> {
    fn drop(&mut self) {
        let out = std::mem::take(&mut self.out);
        if out.len() == OUT_CAP {
            OUT_POOL.with(|p| p.set(Some(out)));
        }
    }
}

impl<R: BufRead, F: FnMut() -> io::Result<File>> Scanner<R, F> {
    fn new(r: R, spool_fn: F) -> Self {
        let out = OUT_POOL
            .with(|p| p.take())
            .unwrap_or_else(|| vec![0u8; OUT_CAP].into_boxed_slice());
        Scanner {
            lx: Lexer { r, pos: 0 },
            spool_fn,
            out,
            spool_mem: Vec::new(),
        }
    }

    /// An object whose `{` was consumed.
    fn object<T: ContentTarget>(
        &mut self,
        target: &mut T,
    ) -> Result<EntryOutcome<T::Out>, ScanError> {
        let mut e: Entry<T::Out> = Entry {
            meta: Meta::default(),
            bad: None,
            bad_kind: BadKind::Entry,
            seen: 0,
            enc: None,
            content: Content::Absent,
        };
        self.lx.skip_ws()?;
        if self.lx.peek()? == Some(b'}') {
            self.lx.bump();
            return self.finish(e, target);
        }
        loop {
            self.lx.skip_ws()?;
            self.lx.expect(b'"', "expected a string key")?;
            let mut ks = KeySink::default();
            self.lx.string(&mut ks)?;
            self.lx.skip_ws()?;
            self.lx.expect(b':', "expected ':'")?;
            self.lx.skip_ws()?;
            match Key::of(&ks) {
                None => self.lx.skip_value()?,
                Some(k) => {
                    let bit = 1u8 << (k as u8);
                    if e.seen & bit != 0 {
                        e.set_bad(format!("duplicate key {:?}", k.name()));
                        self.lx.skip_value()?;
                    } else {
                        e.seen |= bit;
                        if k == Key::Content {
                            self.content(&mut e, target)?;
                        } else {
                            self.meta_field(&mut e, k)?;
                        }
                    }
                }
            }
            self.lx.skip_ws()?;
            match self.lx.next()? {
                b',' => {}
                b'}' => break,
                _ => return Err(self.lx.syntax_prev("expected ',' or '}'")),
            }
        }
        self.finish(e, target)
    }

    fn meta_value(&mut self, k: Key) -> Result<MetaVal, ScanError> {
        match self.lx.peek()? {
            Some(b'"') => {
                self.lx.bump();
                let mut s = MetaSink::default();
                self.lx.string(&mut s)?;
                if s.over {
                    return Ok(MetaVal::Bad(format!(
                        "{} longer than {MAX_META_LEN} bytes",
                        k.name()
                    )));
                }
                Ok(match String::from_utf8(s.buf) {
                    Ok(v) => MetaVal::Str(v),
                    Err(_) => MetaVal::Bad(format!("{} is not valid UTF-8", k.name())),
                })
            }
            Some(b'n') => {
                self.lx.bump();
                self.lx.literal(b"ull")?;
                Ok(MetaVal::Null)
            }
            _ => {
                self.lx.skip_value()?;
                Ok(MetaVal::Bad(format!(
                    "{} must be a string or null",
                    k.name()
                )))
            }
        }
    }

    fn meta_field<O>(&mut self, e: &mut Entry<O>, k: Key) -> Result<(), ScanError> {
        let v = match self.meta_value(k)? {
            MetaVal::Str(s) => Some(s),
            MetaVal::Null => None,
            MetaVal::Bad(reason) => {
                e.set_bad(reason);
                return Ok(());
            }
        };
        match k {
            Key::Path => e.meta.path = v,
            Key::Revision => e.meta.revision = v,
            Key::ContentHash => e.meta.content_hash = v,
            Key::ContentType => e.meta.content_type = v,
            Key::Encoding => {
                match classify_encoding(v.as_deref()) {
                    Ok(enc) => e.enc = Some(enc),
                    Err(reason) => e.set_bad_kind(BadKind::Content, reason),
                }
                e.meta.encoding = v;
            }
            Key::Content => unreachable!(),
        }
        Ok(())
    }

    fn content<T: ContentTarget>(
        &mut self,
        e: &mut Entry<T::Out>,
        target: &mut T,
    ) -> Result<(), ScanError> {
        match self.lx.peek()? {
            Some(b'"') => self.lx.bump(),
            Some(b'n') => {
                self.lx.bump();
                return self.lx.literal(b"ull");
            }
            _ => {
                e.set_bad("content must be a string or null");
                return self.lx.skip_value();
            }
        }
        if e.bad.is_some() {
            e.content = Content::Skipped;
            return self.lx.string(&mut Skip);
        }
        match e.enc {
            Some(enc) => {
                let mut out = target.begin(&e.meta).map_err(ScanError::Local)?;
                let mut sink = DirectSink::new(enc, &mut self.out, target, &mut out);
                self.lx.string(&mut sink)?;
                let (decoded, bad) = sink.finish()?;
                if let Some(reason) = bad {
                    e.set_bad_kind(BadKind::Content, reason);
                }
                e.content = Content::Direct { out, decoded };
            }
            None => {
                self.spool_mem.clear();
                let mut sink = SpoolSink {
                    mem: &mut self.spool_mem,
                    file: None,
                    spool_fn: &mut self.spool_fn,
                };
                self.lx.string(&mut sink)?;
                e.content = match sink.file {
                    None => Content::SpooledMem,
                    Some(w) => Content::SpooledFile(
                        w.into_inner()
                            .map_err(|e| ScanError::Local(e.into_error()))?,
                    ),
                };
            }
        }
        Ok(())
    }

    fn finish<T: ContentTarget>(
        &mut self,
        mut e: Entry<T::Out>,
        target: &mut T,
    ) -> Result<EntryOutcome<T::Out>, ScanError> {
        if e.meta.path.is_none() {
            e.set_bad("missing path");
        }
        if let Some(reason) = e.bad {
            return Ok(EntryOutcome::Bad {
                meta: e.meta,
                reason,
                kind: e.bad_kind,
            });
        }
        let enc = e.enc.unwrap_or(Enc::Text);
        let (out, decoded) = match e.content {
            Content::Direct { out, decoded } => (out, decoded),
            Content::Skipped => unreachable!("content is only skipped for bad entries"),
            Content::Absent => {
                let mut out = target.begin(&e.meta).map_err(ScanError::Local)?;
                let (decoded, _) =
                    DirectSink::new(Enc::Text, &mut self.out, target, &mut out).finish()?;
                (out, decoded)
            }
            Content::SpooledMem => {
                let mut out = target.begin(&e.meta).map_err(ScanError::Local)?;
                let mut sink = DirectSink::new(enc, &mut self.out, target, &mut out);
                sink.bytes(&self.spool_mem)?;
                let (decoded, bad) = sink.finish()?;
                self.spool_mem.clear();
                if let Some(reason) = bad {
                    return Ok(EntryOutcome::Bad {
                        meta: e.meta,
                        reason: reason.to_string(),
                        kind: BadKind::Content,
                    });
                }
                (out, decoded)
            }
            Content::SpooledFile(mut f) => {
                f.seek(SeekFrom::Start(0)).map_err(ScanError::Local)?;
                let mut out = target.begin(&e.meta).map_err(ScanError::Local)?;
                let mut sink = DirectSink::new(enc, &mut self.out, target, &mut out);
                let buf = &mut self.spool_mem;
                buf.clear();
                buf.resize(SPOOL_IO_CAP, 0);
                loop {
                    let n = match f.read(buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        Err(err) => return Err(ScanError::Local(err)),
                    };
                    sink.bytes(&buf[..n])?;
                }
                buf.clear();
                let (decoded, bad) = sink.finish()?;
                if let Some(reason) = bad {
                    return Ok(EntryOutcome::Bad {
                        meta: e.meta,
                        reason: reason.to_string(),
                        kind: BadKind::Content,
                    });
                }
                (out, decoded)
            }
        };
        let mismatch = e
            .meta
            .content_hash
            .as_deref()
            .filter(|want| !want.is_empty() && !want.eq_ignore_ascii_case(&decoded.sha256));
        if let Some(want) = mismatch {
            let reason = format!(
                "content hash mismatch: expected {want}, got {}",
                decoded.sha256
            );
            return Ok(EntryOutcome::Bad {
                meta: e.meta,
                reason,
                kind: BadKind::HashMismatch,
            });
        }
        Ok(EntryOutcome::Ok {
            meta: e.meta,
            decoded,
            out,
        })
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
