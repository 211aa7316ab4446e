//! Delta records: a checkpoint archive sent as "bytes you do not have" and
//! "pages you already hold", for content-addressed pre-copy.
//!
//! The target holds an earlier full checkpoint archive of the container,
//! taken while it ran (the base). [`TarPager`] cuts the data of every member
//! of an archive into 4 KiB pages, counted from the start of each member:
//! CRIU's page images, the root file system's changes and the volumes alike.
//! Both sides number the base's pages 0, 1, 2, ... in archive order; the
//! source knows the blake3 hash of each. At the freeze, Podman writes the
//! final archive (uncompressed) and [`DeltaEncoder`] replaces each of its
//! pages that the target holds by its number:
//!
//! ```text
//!  DataHeader{kind: CheckpointDelta{base}}
//!  DeltaRecord::Raw{len}            <len bytes>     bytes the target lacks
//!  DeltaRecord::Zstd{len, raw_len}  <len bytes>     the same, compressed
//!  DeltaRecord::Pages{index, count}                 count pages of the base, from index
//!  ...
//!  DeltaRecord::End
//! ```
//!
//! Every archive stream uses these records, with or without a base: they
//! are also how compression is applied. With [`DeltaEncoder::compress`] on,
//! each run of raw bytes (up to 1 MiB) is compressed with zstd and sent
//! compressed only when that saves at least 10 %; after a run that does not,
//! compression is not tried again for 1, 2, 4, then 8 runs, so
//! incompressible memory (encrypted, random, already compressed) costs a
//! probe of 1 MiB in 8 (about 1 ms each), not a compression of everything,
//! and compressible memory after it is found again within 8 MiB.
//!
//! The target rebuilds the archive byte for byte and checks its blake3 hash
//! against the digest of the original archive, which the source computed
//! as Podman wrote it. Parsing the tar only decides where pages may be
//! found: a member the pager does not understand is sent raw, so a wrong
//! guess costs bytes on the wire, never correctness.

use crate::frame::{encode, FrameCollector, FrameError, WireMessage};
use serde::{Deserialize, Serialize};

/// CRIU's page size on x86_64 (and the unit of deduplication).
pub const PAGE: usize = 4096;
/// The largest raw run in one record.
pub const MAX_RAW: u32 = 1 << 20;
const BLOCK: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaRecord {
    Invalid,
    /// `len` (at most [`MAX_RAW`]) raw bytes follow.
    Raw {
        len: u32,
    },
    /// `len` bytes of zstd follow, `raw_len` (at most [`MAX_RAW`]) once
    /// decompressed.
    Zstd {
        len: u32,
        raw_len: u32,
    },
    /// `count` pages of the base, starting at page `index`.
    Pages {
        index: u32,
        count: u32,
    },
    /// The archive is complete.
    End,
}

impl WireMessage for DeltaRecord {
    const NAME: &'static str = "DeltaRecord";
    fn is_invalid(&self) -> bool {
        matches!(self, DeltaRecord::Invalid)
    }
}

/// A piece of the archive, as [`TarPager`] cuts it.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes to send as they are.
    Raw(&'a [u8]),
    /// One whole page of a CRIU pages file.
    Page(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Inside a member's data; `pages` when it is a CRIU pages file, `pad`
    /// the padding bytes after it.
    Data { left: u64, pages: bool, pad: u64 },
    /// The padding to the next 512-byte boundary.
    Pad { left: u64 },
    /// Something unparseable was seen: the rest is raw.
    Opaque,
}

/// Cuts a tar stream into raw bytes and the 4 KiB pages of its members'
/// data, as the stream arrives in arbitrary slices.
pub struct TarPager {
    state: State,
    buf: Vec<u8>,
    /// Page only CRIU `pages-*.img` members (else every regular member).
    criu_pages_only: bool,
}

impl Default for TarPager {
    /// Pages every regular member.
    fn default() -> Self {
        TarPager { state: State::Header, buf: Vec::with_capacity(PAGE), criu_pages_only: false }
    }
}

impl TarPager {
    /// Pages only CRIU's page images.
    pub fn criu_pages_only() -> Self {
        TarPager { criu_pages_only: true, ..Default::default() }
    }
}

/// Reads a tar numeric field: octal text, or base-256 when the high bit of
/// the first byte is set.
fn tar_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|b| *b != 0).filter(|b| *b != b' ').collect();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

fn c_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Whether a member named `path` holds CRIU page data.
fn is_pages_file(path: &[u8]) -> bool {
    let base = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    base.starts_with(b"pages-") && base.ends_with(b".img")
}

/// What follows a header block: (data length, whether it is a regular
/// file, whether it is a CRIU pages file), or `None` when the block does
/// not parse.
fn parse_header(h: &[u8]) -> Option<(u64, bool, bool)> {
    let size = tar_number(&h[124..136])?;
    let typeflag = h[156];
    let name = c_str(&h[0..100]);
    let ustar = &h[257..262] == b"ustar";
    let mut path = Vec::new();
    if ustar && h[345] != 0 {
        path.extend_from_slice(c_str(&h[345..500]));
        path.push(b'/');
    }
    path.extend_from_slice(name);
    let regular = typeflag == b'0' || typeflag == 0;
    Some((size, regular, regular && is_pages_file(&path)))
}

impl TarPager {
    /// Feeds the next bytes of the stream; `emit` receives them back as
    /// pieces, in order, every byte exactly once.
    pub fn feed(&mut self, mut input: &[u8], emit: &mut impl FnMut(Piece<'_>)) {
        while !input.is_empty() {
            match self.state {
                State::Opaque => {
                    emit(Piece::Raw(input));
                    return;
                }
                State::Header => {
                    let take = (BLOCK - self.buf.len()).min(input.len());
                    self.buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.buf.len() < BLOCK {
                        continue;
                    }
                    let header = std::mem::take(&mut self.buf);
                    self.state = if header.iter().all(|b| *b == 0) {
                        // End-of-archive blocks: stay here.
                        State::Header
                    } else {
                        match parse_header(&header) {
                            Some((0, _, _)) => State::Header,
                            Some((left, regular, criu)) => {
                                let pages = if self.criu_pages_only { criu } else { regular };
                                State::Data { left, pages, pad: left.div_ceil(BLOCK as u64) * BLOCK as u64 - left }
                            }
                            None => State::Opaque,
                        }
                    };
                    emit(Piece::Raw(&header));
                    self.buf = header;
                    self.buf.clear();
                }
                State::Data { left, pages: false, .. } => {
                    let take = (left.min(input.len() as u64)) as usize;
                    emit(Piece::Raw(&input[..take]));
                    input = &input[take..];
                    self.after_data(left - take as u64);
                }
                State::Data { left, pages: true, .. } => {
                    // Whole pages straight from the input when aligned.
                    if self.buf.is_empty() && left >= PAGE as u64 && input.len() >= PAGE {
                        emit(Piece::Page(&input[..PAGE]));
                        input = &input[PAGE..];
                        self.after_data(left - PAGE as u64);
                        continue;
                    }
                    let want = (PAGE - self.buf.len()).min(left as usize);
                    let take = want.min(input.len());
                    self.buf.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    let left = left - take as u64;
                    if self.buf.len() == PAGE {
                        emit(Piece::Page(&self.buf));
                        self.buf.clear();
                    } else if left == 0 {
                        // A short tail: not a page.
                        emit(Piece::Raw(&self.buf));
                        self.buf.clear();
                    }
                    self.after_data(left);
                }
                State::Pad { left } => {
                    let take = (left.min(input.len() as u64)) as usize;
                    emit(Piece::Raw(&input[..take]));
                    input = &input[take..];
                    let left = left - take as u64;
                    self.state = if left == 0 { State::Header } else { State::Pad { left } };
                }
            }
        }
    }

    /// The stream ended: hands back whatever is still buffered (a header or
    /// page cut short) as raw bytes, so that no byte is ever lost.
    pub fn finish(&mut self, emit: &mut impl FnMut(Piece<'_>)) {
        if !self.buf.is_empty() {
            emit(Piece::Raw(&self.buf));
            self.buf.clear();
        }
        self.state = State::Header;
    }

    fn after_data(&mut self, left: u64) {
        self.state = match self.state {
            State::Data { pages, pad, .. } if left > 0 => State::Data { left, pages, pad },
            State::Data { pad: 0, .. } => State::Header,
            State::Data { pad, .. } => State::Pad { left: pad },
            s => s,
        };
    }
}

/// Byte counts of one encoded archive.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeltaStats {
    /// Bytes of the original archive.
    pub archive_bytes: u64,
    /// Pages the target already held: not sent.
    pub pages_reused: u64,
    /// Pages sent raw.
    pub pages_sent: u64,
    /// Bytes sent as they are (pages the target lacked and everything else).
    pub raw_bytes: u64,
    /// Bytes sent compressed, before and after compression.
    pub zstd_in: u64,
    pub zstd_out: u64,
}

/// When to try compressing the next raw run: after a run that did not
/// shrink by 10 %, skip 1, then 2, 4, at most 8 runs (module docs).
#[derive(Debug, Clone)]
pub struct Packer {
    pub level: i32,
    /// Runs to send without trying.
    skip: u32,
    /// How many runs the next failure skips (doubles up to 8).
    backoff: u32,
}

impl Packer {
    pub fn new(level: i32) -> Self {
        Packer { level, skip: 0, backoff: 1 }
    }

    /// Whether to try the next run (false while backing off).
    pub fn want(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// What a try gave: compression paid, or not.
    pub fn tried(&mut self, paid: bool) {
        if paid {
            self.backoff = 1;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(8);
        }
    }
}

/// `run` compressed at `level`, when that saves at least 10 %.
pub fn compress_run(run: &[u8], level: i32) -> Option<Vec<u8>> {
    let packed = zstd::bulk::compress(run, level).ok()?;
    (!packed.is_empty() && packed.len() * 10 <= run.len() * 9).then_some(packed)
}

/// Appends `run` as one record: `packed` (its zstd form) when given, else
/// raw; counts it in `stats`.
pub fn pack_run(run: &[u8], packed: Option<&[u8]>, out: &mut Vec<u8>, stats: &mut DeltaStats) -> Result<(), FrameError> {
    match packed {
        Some(z) => {
            out.extend(encode(&DeltaRecord::Zstd { len: z.len() as u32, raw_len: run.len() as u32 })?);
            out.extend_from_slice(z);
            stats.zstd_in += run.len() as u64;
            stats.zstd_out += z.len() as u64;
        }
        None => {
            out.extend(encode(&DeltaRecord::Raw { len: run.len() as u32 })?);
            out.extend_from_slice(run);
            stats.raw_bytes += run.len() as u64;
        }
    }
    Ok(())
}

/// What the encoder hands on, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment {
    /// Records ready for the wire (page references, the end).
    Ready(Vec<u8>),
    /// Raw bytes (at most [`MAX_RAW`]) still to be packed as one record,
    /// compressed or not ([`pack_run`]): a caller may compress several on
    /// as many threads, as long as it keeps the order.
    Run(Vec<u8>),
}

/// Turns an archive stream into delta records, given which pages the target
/// holds. Output accumulates until the caller takes it: as bytes packed on
/// this thread ([`DeltaEncoder::take_output`]), or as [`Segment`]s to pack
/// elsewhere ([`DeltaEncoder::take_segments`]).
#[derive(Default)]
pub struct DeltaEncoder {
    pager: TarPager,
    raw: Vec<u8>,
    run: Option<(u32, u32)>,
    segments: Vec<Segment>,
    pub stats: DeltaStats,
    packer: Option<Packer>,
}

impl DeltaEncoder {
    /// Compress raw runs with zstd at `level` where it pays (module docs),
    /// in [`DeltaEncoder::take_output`].
    pub fn compress(mut self, level: i32) -> Self {
        self.packer = Some(Packer::new(level));
        self
    }

    /// Feeds archive bytes; `lookup` says which base page (if any) holds
    /// exactly this page's content.
    pub fn feed(&mut self, input: &[u8], lookup: &mut impl FnMut(&[u8]) -> Option<u32>) -> Result<(), FrameError> {
        self.stats.archive_bytes += input.len() as u64;
        let mut err = None;
        let mut pager = std::mem::take(&mut self.pager);
        pager.feed(input, &mut |piece| {
            if err.is_some() {
                return;
            }
            let r = match piece {
                Piece::Raw(b) => self.push_raw(b),
                Piece::Page(p) => match lookup(p) {
                    Some(index) => {
                        self.stats.pages_reused += 1;
                        self.push_page(index)
                    }
                    None => {
                        self.stats.pages_sent += 1;
                        self.push_raw(p)
                    }
                },
            };
            if let Err(e) = r {
                err = Some(e);
            }
        });
        self.pager = pager;
        err.map_or(Ok(()), Err)
    }

    fn push_raw(&mut self, mut b: &[u8]) -> Result<(), FrameError> {
        self.flush_run()?;
        while !b.is_empty() {
            let take = (MAX_RAW as usize - self.raw.len()).min(b.len());
            self.raw.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.raw.len() == MAX_RAW as usize {
                self.flush_raw();
            }
        }
        Ok(())
    }

    fn push_page(&mut self, index: u32) -> Result<(), FrameError> {
        self.flush_raw();
        match &mut self.run {
            Some((start, count)) if start.checked_add(*count) == Some(index) => *count += 1,
            _ => {
                self.flush_run()?;
                self.run = Some((index, 1));
            }
        }
        Ok(())
    }

    fn flush_raw(&mut self) {
        if !self.raw.is_empty() {
            self.segments.push(Segment::Run(std::mem::take(&mut self.raw)));
        }
    }

    fn ready(&mut self, record: &DeltaRecord) -> Result<(), FrameError> {
        let bytes = encode(record)?;
        match self.segments.last_mut() {
            Some(Segment::Ready(b)) => b.extend(bytes),
            _ => self.segments.push(Segment::Ready(bytes)),
        }
        Ok(())
    }

    fn flush_run(&mut self) -> Result<(), FrameError> {
        if let Some((index, count)) = self.run.take() {
            self.ready(&DeltaRecord::Pages { index, count })?;
        }
        Ok(())
    }

    /// What is ready so far, raw runs still to pack; leaves none behind.
    pub fn take_segments(&mut self) -> Vec<Segment> {
        std::mem::take(&mut self.segments)
    }

    /// The encoded bytes so far (records and raw data, runs packed here),
    /// leaving the buffer empty.
    pub fn take_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for seg in self.take_segments() {
            match seg {
                Segment::Ready(b) => out.extend(b),
                Segment::Run(run) => {
                    let mut packed = None;
                    if let Some(p) = self.packer.as_mut() {
                        if p.want() {
                            packed = compress_run(&run, p.level);
                            p.tried(packed.is_some());
                        }
                    }
                    // Encoding a record header cannot fail: its length fits.
                    let _ = pack_run(&run, packed.as_deref(), &mut out, &mut self.stats);
                }
            }
        }
        out
    }

    /// Ends the stream: what is pending, then `End`, as segments.
    pub fn finish_segments(&mut self) -> Result<Vec<Segment>, FrameError> {
        let mut tail = Vec::new();
        self.pager.finish(&mut |p| match p {
            Piece::Raw(b) | Piece::Page(b) => tail.extend_from_slice(b),
        });
        self.push_raw(&tail)?;
        self.flush_raw();
        self.flush_run()?;
        self.ready(&DeltaRecord::End)?;
        Ok(self.take_segments())
    }

    /// Ends the stream: flushes what is pending and appends `End`.
    pub fn finish(&mut self) -> Result<Vec<u8>, FrameError> {
        let tail = self.finish_segments()?;
        self.segments = tail;
        Ok(self.take_output())
    }
}

/// What [`DeltaDecoder`] found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Archive bytes, to write as they are.
    Raw(&'a [u8]),
    /// `count` pages of the base from page `index`, to copy in.
    Pages { index: u32, count: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("bad delta record: {0}")]
    Frame(#[from] FrameError),
    #[error("a raw record announces {0} bytes, above the limit of {MAX_RAW}")]
    RawTooLarge(u32),
    #[error("a compressed record does not decompress to the {0} bytes it announces")]
    BadZstd(u32),
    #[error("a record refers to pages of a base, and this stream has none")]
    NoBase,
    #[error("{0} bytes follow the End record")]
    AfterEnd(usize),
    #[error("the delta stream ended without its End record")]
    Unfinished,
    #[error("{0}")]
    Sink(String),
}

/// Reads delta records from a stream arriving in arbitrary slices. Holds at
/// most one record header (a few bytes) between calls: raw bytes are handed
/// on as they arrive.
pub struct DeltaDecoder {
    /// Record frames are tiny.
    head: FrameCollector,
    raw_left: u32,
    /// A compressed record being collected: its bytes so far, its raw size.
    zstd: Option<(Vec<u8>, u32)>,
    zstd_left: u32,
    ended: bool,
}

impl Default for DeltaDecoder {
    fn default() -> Self {
        DeltaDecoder { head: FrameCollector::new(64), raw_left: 0, zstd: None, zstd_left: 0, ended: false }
    }
}

/// The most a compressed record of [`MAX_RAW`] bytes may take (zstd's bound).
fn max_zstd_len() -> u32 {
    zstd::zstd_safe::compress_bound(MAX_RAW as usize) as u32
}

impl DeltaDecoder {
    /// Feeds the next bytes; `sink` receives what they hold, in order.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(Decoded<'_>) -> Result<(), String>) -> Result<(), DeltaError> {
        while !input.is_empty() {
            if self.ended {
                return Err(DeltaError::AfterEnd(input.len()));
            }
            if self.raw_left > 0 {
                let take = (self.raw_left as usize).min(input.len());
                sink(Decoded::Raw(&input[..take])).map_err(DeltaError::Sink)?;
                self.raw_left -= take as u32;
                input = &input[take..];
                continue;
            }
            if self.zstd_left > 0 {
                let take = (self.zstd_left as usize).min(input.len());
                let (buf, raw_len) = self.zstd.as_mut().expect("collecting");
                buf.extend_from_slice(&input[..take]);
                self.zstd_left -= take as u32;
                input = &input[take..];
                if self.zstd_left == 0 {
                    let raw_len = *raw_len;
                    let (buf, _) = self.zstd.take().expect("collecting");
                    // The announced size bounds the output: a hostile record
                    // cannot make this allocate more than MAX_RAW.
                    let raw = zstd::bulk::decompress(&buf, raw_len as usize).map_err(|_| DeltaError::BadZstd(raw_len))?;
                    if raw.len() != raw_len as usize {
                        return Err(DeltaError::BadZstd(raw_len));
                    }
                    sink(Decoded::Raw(&raw)).map_err(DeltaError::Sink)?;
                }
                continue;
            }
            let Some(rec) = self.head.push::<DeltaRecord>(&mut input)? else { continue };
            match rec {
                DeltaRecord::Raw { len } if len > MAX_RAW => return Err(DeltaError::RawTooLarge(len)),
                DeltaRecord::Raw { len } => self.raw_left = len,
                DeltaRecord::Zstd { len, raw_len } if raw_len > MAX_RAW || len > max_zstd_len() || len == 0 => {
                    return Err(DeltaError::RawTooLarge(raw_len.max(len)))
                }
                DeltaRecord::Zstd { len, raw_len } => {
                    self.zstd = Some((Vec::with_capacity(len as usize), raw_len));
                    self.zstd_left = len;
                }
                DeltaRecord::Pages { index, count } => sink(Decoded::Pages { index, count }).map_err(DeltaError::Sink)?,
                DeltaRecord::End => self.ended = true,
                DeltaRecord::Invalid => return Err(FrameError::Invalid(DeltaRecord::NAME).into()),
            }
        }
        Ok(())
    }

    /// Call at the end of the stream: it must have ended with `End`.
    pub fn finish(&self) -> Result<(), DeltaError> {
        if self.ended {
            Ok(())
        } else {
            Err(DeltaError::Unfinished)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode;

    /// A minimal ustar archive of (name, data) members.
    fn tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[156] = b'0';
            h[257..262].copy_from_slice(b"ustar");
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    fn pages(fills: &[u8]) -> Vec<u8> {
        fills.iter().flat_map(|f| page(*f)).collect()
    }

    /// Cuts `archive` fed in slices of `step` bytes; returns the pieces joined
    /// back and the pages seen.
    fn cut(archive: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
        cut_with(TarPager::criu_pages_only(), archive, step)
    }

    fn cut_with(mut pager: TarPager, archive: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
        let mut joined = Vec::new();
        let mut seen = Vec::new();
        let mut on_piece = |p: Piece<'_>| match p {
            Piece::Raw(b) => joined.extend_from_slice(b),
            Piece::Page(b) => {
                assert_eq!(b.len(), PAGE);
                seen.push(b[0]);
                joined.extend_from_slice(b);
            }
        };
        for chunk in archive.chunks(step) {
            pager.feed(chunk, &mut on_piece);
        }
        pager.finish(&mut on_piece);
        (joined, seen)
    }

    #[test]
    fn pages_of_pages_files_are_found_whatever_the_slicing() {
        let archive = tar(&[
            ("config.dump", b"{\"a\":1}".to_vec()),
            ("checkpoint/pages-1.img", pages(&[1, 2, 3])),
            ("checkpoint/pagemap-1.img", vec![9; 100]),
            ("checkpoint/pages-2.img", pages(&[4])),
            ("rootfs-diff.tar", page(7)),
        ]);
        for step in [1, 7, 511, 512, 4096, 5000, archive.len()] {
            let (joined, seen) = cut(&archive, step);
            assert_eq!(joined, archive, "step {step}: every byte comes back, in order");
            assert_eq!(seen, vec![1, 2, 3, 4], "step {step}: only pages files are paged");
        }
    }

    #[test]
    fn by_default_every_member_is_paged_from_its_start() {
        let mut volume = pages(&[5, 6]);
        volume.extend_from_slice(&[1; 100]); // a short tail stays raw
        let archive = tar(&[
            ("config.dump", b"{}".to_vec()),
            ("checkpoint/pages-1.img", pages(&[1])),
            ("volumes/data.tar", volume),
            ("rootfs-diff.tar", page(7)),
        ]);
        for step in [3, 512, 4096, archive.len()] {
            let (joined, seen) = cut_with(TarPager::default(), &archive, step);
            assert_eq!(joined, archive);
            assert_eq!(seen, vec![1, 5, 6, 7], "step {step}");
        }
    }

    #[test]
    fn garbage_is_passed_through_raw() {
        let mut junk: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        junk[124] = b'z'; // an unparseable size
        let (joined, seen) = cut(&junk, 333);
        assert_eq!(joined, junk);
        assert!(seen.is_empty());
    }

    #[test]
    fn a_huge_announced_size_is_harmless() {
        let mut archive = tar(&[("checkpoint/pages-1.img", pages(&[1]))]);
        archive[124..135].copy_from_slice(b"77777777777");
        let (joined, _) = cut(&archive, 1000);
        assert_eq!(joined, archive);
    }

    /// Decodes an encoder's output against `base` pages.
    fn rebuild(encoded: &[u8], base: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let (rec, used) = decode::<DeltaRecord>(&encoded[at..]).unwrap().unwrap();
            at += used;
            match rec {
                DeltaRecord::Raw { len } => {
                    out.extend_from_slice(&encoded[at..at + len as usize]);
                    at += len as usize;
                }
                DeltaRecord::Zstd { len, raw_len } => {
                    out.extend(zstd::bulk::decompress(&encoded[at..at + len as usize], raw_len as usize).unwrap());
                    at += len as usize;
                }
                DeltaRecord::Pages { index, count } => {
                    for i in index..index + count {
                        out.extend_from_slice(&base[i as usize]);
                    }
                }
                DeltaRecord::End => break,
                DeltaRecord::Invalid => panic!("invalid"),
            }
        }
        assert_eq!(at, encoded.len());
        out
    }

    #[test]
    fn encoder_reuses_held_pages_in_runs_and_rebuilds_exactly() {
        let base: Vec<Vec<u8>> = (10..20).map(page).collect();
        let archive = tar(&[
            ("spec.dump", vec![1; 3000]),
            // Pages 10..=13 held (a run of 4), 99 new, 15 and 16 held.
            ("checkpoint/pages-1.img", pages(&[10, 11, 12, 13, 99, 15, 16])),
        ]);
        let mut enc = DeltaEncoder::default();
        let mut lookup = |p: &[u8]| base.iter().position(|b| b == p).map(|i| i as u32);
        let mut wire = Vec::new();
        for chunk in archive.chunks(1500) {
            enc.feed(chunk, &mut lookup).unwrap();
            wire.extend(enc.take_output());
        }
        wire.extend(enc.finish().unwrap());
        assert_eq!(rebuild(&wire, &base), archive);
        assert_eq!(enc.stats.pages_reused, 6);
        assert_eq!(enc.stats.pages_sent, 1);
        assert_eq!(enc.stats.archive_bytes, archive.len() as u64);
        assert!(wire.len() < archive.len() - 5 * PAGE, "{} vs {}", wire.len(), archive.len());
        // Two runs: 0..4 and 5..7.
        let runs = count_records(&wire, |r| matches!(r, DeltaRecord::Pages { .. }));
        assert_eq!(runs, 2);
    }

    fn count_records(wire: &[u8], pred: impl Fn(&DeltaRecord) -> bool) -> usize {
        let mut at = 0;
        let mut n = 0;
        while at < wire.len() {
            let (rec, used) = decode::<DeltaRecord>(&wire[at..]).unwrap().unwrap();
            at += used;
            if let DeltaRecord::Raw { len } | DeltaRecord::Zstd { len, .. } = rec {
                at += len as usize;
            }
            n += pred(&rec) as usize;
        }
        n
    }

    #[test]
    fn a_stream_cut_mid_page_loses_nothing() {
        let archive = tar(&[("checkpoint/pages-1.img", pages(&[1, 2]))]);
        for cut_at in [100, 512, 700, 512 + 4096 + 10, archive.len() - 1] {
            let part = &archive[..cut_at];
            let mut enc = DeltaEncoder::default();
            enc.feed(part, &mut |_| None).unwrap();
            let mut wire = enc.take_output();
            wire.extend(enc.finish().unwrap());
            assert_eq!(rebuild(&wire, &[]), part, "cut at {cut_at}");
        }
    }

    #[test]
    fn raw_records_never_exceed_the_limit() {
        let big = vec![5u8; 3 * MAX_RAW as usize + 17];
        let archive = tar(&[("rootfs-diff.tar", big)]);
        let mut enc = DeltaEncoder::default();
        enc.feed(&archive, &mut |_| None).unwrap();
        let mut wire = enc.take_output();
        wire.extend(enc.finish().unwrap());
        assert_eq!(rebuild(&wire, &[]), archive);
    }

    fn decode_all(wire: &[u8], step: usize, base: &[Vec<u8>]) -> Result<Vec<u8>, DeltaError> {
        let mut dec = DeltaDecoder::default();
        let mut out = Vec::new();
        for chunk in wire.chunks(step) {
            dec.feed(chunk, &mut |d| {
                match d {
                    Decoded::Raw(b) => out.extend_from_slice(b),
                    Decoded::Pages { index, count } => {
                        for i in index..index.checked_add(count).ok_or("overflow")? {
                            out.extend_from_slice(base.get(i as usize).ok_or_else(|| format!("no page {i}"))?);
                        }
                    }
                }
                Ok(())
            })?;
        }
        dec.finish()?;
        Ok(out)
    }

    #[test]
    fn decoder_rebuilds_whatever_the_slicing() {
        let base: Vec<Vec<u8>> = (0..8).map(page).collect();
        let archive = tar(&[("checkpoint/pages-3.img", pages(&[0, 1, 2, 77, 5, 6]))]);
        let mut enc = DeltaEncoder::default();
        enc.feed(&archive, &mut |p: &[u8]| base.iter().position(|b| b == p).map(|i| i as u32)).unwrap();
        let mut wire = enc.take_output();
        wire.extend(enc.finish().unwrap());
        for step in [1, 3, 4, 5, 100, 4096, wire.len()] {
            assert_eq!(decode_all(&wire, step, &base).unwrap(), archive, "step {step}");
        }
    }

    #[test]
    fn decoder_refuses_hostile_streams() {
        let rec = |r: &DeltaRecord| encode(r).unwrap();
        // No End.
        assert!(matches!(decode_all(&rec(&DeltaRecord::Pages { index: 0, count: 1 }), 7, &[page(1)]), Err(DeltaError::Unfinished)));
        // Bytes after End.
        let mut w = rec(&DeltaRecord::End);
        w.push(0);
        assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::AfterEnd(1))));
        // A raw record above the limit.
        let w = rec(&DeltaRecord::Raw { len: MAX_RAW + 1 });
        assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::RawTooLarge(_))));
        // A page the base does not have: the sink's error comes back.
        let mut w = rec(&DeltaRecord::Pages { index: 5, count: 1 });
        w.extend(rec(&DeltaRecord::End));
        assert!(matches!(decode_all(&w, 100, &[page(1)]), Err(DeltaError::Sink(m)) if m.contains("no page 5")));
        // A huge frame length and the zero variant.
        assert!(matches!(decode_all(&[0xff, 0xff, 0xff, 0xff, 0], 100, &[]), Err(DeltaError::Frame(_))));
        assert!(matches!(decode_all(&[0, 0, 0, 1, 0], 100, &[]), Err(DeltaError::Frame(_))));
        // Garbage of every length never panics.
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let _ = decode_all(&junk, 3, &[page(0)]);
        }
    }

    #[test]
    fn compression_is_used_where_it_pays_and_backs_off_where_not() {
        // 3 MiB of text-like bytes, then 6 MiB of noise, then text again.
        let text: Vec<u8> = b"the quick brown fox ".iter().cycle().take(3 << 20).copied().collect();
        let mut seed = 7u64;
        let noise: Vec<u8> = (0..6 << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let more: Vec<u8> = b"jumps over the lazy dog ".iter().cycle().take(12 << 20).copied().collect();
        let archive = tar(&[("a.txt", text), ("noise", noise), ("b.txt", more)]);
        let mut enc = DeltaEncoder::default().compress(1);
        let mut wire = Vec::new();
        for chunk in archive.chunks(100_000) {
            enc.feed(chunk, &mut |_| None).unwrap();
            wire.extend(enc.take_output());
        }
        wire.extend(enc.finish().unwrap());
        for step in [7, 4096, 1 << 20] {
            assert_eq!(decode_all(&wire, step, &[]).unwrap(), archive, "step {step}");
        }
        let s = enc.stats;
        assert!(s.zstd_in >= (3 + 4) << 20, "both texts compressed: {s:?}");
        assert!(s.zstd_out * 20 < s.zstd_in, "{s:?}");
        assert!(s.raw_bytes >= 5 << 20, "the noise went raw: {s:?}");
        assert!(wire.len() < archive.len() * 3 / 4);
    }

    #[test]
    fn segments_packed_elsewhere_make_the_same_stream() {
        // Runs mixed with page references, packed by the caller (as the
        // agent does on several threads) or by the encoder itself.
        let base = pages(&[1, 2, 3]);
        let text: Vec<u8> = b"abcdefgh".iter().cycle().take(2 << 20).copied().collect();
        let archive = tar(&[("checkpoint/pages-1.img", [page(9), page(1), page(2), page(8), page(3)].concat()), ("t", text)]);
        let held = |p: &[u8]| base.chunks(PAGE).position(|b| b == p).map(|i| i as u32);
        let mut inline = DeltaEncoder::default().compress(1);
        let mut outside = DeltaEncoder::default();
        let mut packer = Packer::new(1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut stats = DeltaStats::default();
        let mut pack = |segs: Vec<Segment>, out: &mut Vec<u8>| {
            for seg in segs {
                match seg {
                    Segment::Ready(r) => out.extend(r),
                    Segment::Run(run) => {
                        let z = if packer.want() { compress_run(&run, 1) } else { None };
                        packer.tried(z.is_some());
                        pack_run(&run, z.as_deref(), out, &mut stats).unwrap();
                    }
                }
            }
        };
        for chunk in archive.chunks(3000) {
            inline.feed(chunk, &mut |p| held(p)).unwrap();
            a.extend(inline.take_output());
            outside.feed(chunk, &mut |p| held(p)).unwrap();
            pack(outside.take_segments(), &mut b);
        }
        a.extend(inline.finish().unwrap());
        pack(outside.finish_segments().unwrap(), &mut b);
        assert_eq!(a, b);
        assert_eq!((stats.zstd_in, stats.raw_bytes), (inline.stats.zstd_in, inline.stats.raw_bytes));
        let base_pages: Vec<Vec<u8>> = base.chunks(PAGE).map(<[u8]>::to_vec).collect();
        assert_eq!(decode_all(&b, 1000, &base_pages).unwrap(), archive);
    }

    #[test]
    fn hostile_compressed_records_are_refused() {
        let rec = |r: &DeltaRecord| encode(r).unwrap();
        // Announces more than MAX_RAW once decompressed.
        let w = rec(&DeltaRecord::Zstd { len: 10, raw_len: MAX_RAW + 1 });
        assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::RawTooLarge(_))));
        // A bomb: tiny input that would inflate past what it announces.
        let bomb = zstd::bulk::compress(&vec![0u8; MAX_RAW as usize], 1).unwrap();
        let mut w = rec(&DeltaRecord::Zstd { len: bomb.len() as u32, raw_len: 4096 });
        w.extend_from_slice(&bomb);
        w.extend(rec(&DeltaRecord::End));
        assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::BadZstd(4096))));
        // Garbage inside a compressed record.
        let mut w = rec(&DeltaRecord::Zstd { len: 5, raw_len: 100 });
        w.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::BadZstd(100))));
    }
}
