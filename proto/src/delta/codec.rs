//! The codec: [`DeltaEncoder`] turns an archive into records (pages the
//! target holds as their numbers, the rest as raw runs for the
//! [`super::Compressor`], as [`Segment`]s), [`DeltaDecoder`] reads them
//! back on the target.
//!
//! The decoder reads what a peer sent: every size in a record is checked
//! against a bound before anything is allocated or handed on (raw and
//! decompressed runs at most [`MAX_RAW`], compressed ones at most zstd's
//! bound for that), and it holds no more than one record header between
//! calls. What a stream may produce is bounded by [`DeltaLimits`]: page
//! references stay inside the base, the whole output under a maximum the
//! caller gives, and references grow the output at most by the base once
//! plus one page per [`PAGE_RECORD_BYTES`] bytes received, so a few bytes
//! of records cannot replay the base over and over.

use super::{Compressor, DeltaRecord, DeltaStats, Packer, Piece, Segment, TarPager, MAX_RAW, PAGE};
use crate::frame::{encode, FrameCollector, FrameError, WireMessage};

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
    /// Packs runs in [`DeltaEncoder::take_output`].
    compressor: Compressor,
}

impl DeltaEncoder {
    /// Compress raw runs with zstd at `level` where it pays
    /// ([`super::policy`]), in [`DeltaEncoder::take_output`].
    pub fn compress(mut self, level: i32) -> Self {
        self.compressor = Compressor::new(Some(Packer::new(level)), 1);
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
            // One segment at a time, on this thread: each try's outcome
            // steers the policy's next decision.
            self.compressor.add([seg]);
            // Encoding a record header cannot fail: its length fits.
            if let Ok(packed) = self.compressor.take(&mut self.stats) {
                out.extend(packed);
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
    #[error("a record refers to pages {index}..+{count}, outside the base's {base_pages} pages")]
    PagesOutsideBase { index: u32, count: u32, base_pages: u32 },
    #[error("a record refers to no page at all")]
    EmptyPages,
    #[error("the stream would produce more than its limit of {limit} bytes")]
    OutputTooLarge { limit: u64 },
    #[error(
        "the stream refers to {pages} pages of the base, more than the base once plus one page per {PAGE_RECORD_BYTES} bytes received ({budget})"
    )]
    TooManyPageRefs { pages: u64, budget: u64 },
    #[error("{0}")]
    Sink(String),
}

/// The smallest record of pages on the wire (length prefix, tag, index
/// and count): past the base once, each page a stream refers to must be
/// paid for by this many bytes received, which a record of one page (the
/// zero page, again and again) always is.
pub const PAGE_RECORD_BYTES: u64 = 7;

/// The most bytes one archive stream may produce by default (4 TiB).
pub const MAX_ARCHIVE_BYTES: u64 = 4 << 40;

/// What one delta stream may produce ([`DeltaDecoder::with_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaLimits {
    /// The pages the base holds: every reference lies inside them, and 0
    /// means the stream has no base ([`DeltaError::NoBase`]). Page
    /// references add to the output at most this many pages plus one page
    /// per [`PAGE_RECORD_BYTES`] bytes of the stream
    /// ([`DeltaError::TooManyPageRefs`]).
    pub base_pages: u32,
    /// The most bytes the stream may produce, raw runs and pages together
    /// (the archive's announced size, with slack).
    pub max_output: u64,
}

impl Default for DeltaLimits {
    /// References are not checked against a base (the sink does it), and
    /// the output is bounded by [`MAX_ARCHIVE_BYTES`].
    fn default() -> Self {
        DeltaLimits { base_pages: u32::MAX, max_output: MAX_ARCHIVE_BYTES }
    }
}

impl DeltaLimits {
    /// A stream against a base of `base_pages` pages (0: no base),
    /// producing at most `max_output` bytes.
    pub fn new(base_pages: u32, max_output: u64) -> Self {
        DeltaLimits { base_pages, max_output }
    }
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
    limits: DeltaLimits,
    /// Bytes fed so far.
    input: u64,
    /// Bytes the records so far announced (raw, decompressed and pages).
    output: u64,
    /// Pages the records so far referred to.
    page_refs: u64,
}

impl Default for DeltaDecoder {
    /// The default limits ([`DeltaLimits::default`]).
    fn default() -> Self {
        DeltaDecoder::with_limits(DeltaLimits::default())
    }
}

/// The most a compressed record of [`MAX_RAW`] bytes may take (zstd's bound).
fn max_zstd_len() -> u32 {
    zstd::zstd_safe::compress_bound(MAX_RAW as usize) as u32
}

impl DeltaDecoder {
    pub fn with_limits(limits: DeltaLimits) -> Self {
        DeltaDecoder { head: FrameCollector::new(64), raw_left: 0, zstd: None, zstd_left: 0, ended: false, limits, input: 0, output: 0, page_refs: 0 }
    }

    /// Counts `bytes` more of output against the limit.
    fn produce(&mut self, bytes: u64) -> Result<(), DeltaError> {
        let limit = self.limits.max_output;
        self.output = self.output.checked_add(bytes).filter(|o| *o <= limit).ok_or(DeltaError::OutputTooLarge { limit })?;
        Ok(())
    }

    /// Checks a page reference against the base and the budget, counts it.
    fn refer(&mut self, index: u32, count: u32) -> Result<(), DeltaError> {
        let base_pages = self.limits.base_pages;
        if base_pages == 0 {
            return Err(DeltaError::NoBase);
        }
        if count == 0 {
            return Err(DeltaError::EmptyPages);
        }
        if index.checked_add(count).is_none_or(|end| end > base_pages) {
            return Err(DeltaError::PagesOutsideBase { index, count, base_pages });
        }
        let pages = self.page_refs + u64::from(count);
        let budget = u64::from(base_pages).saturating_add(self.input / PAGE_RECORD_BYTES);
        if pages > budget {
            return Err(DeltaError::TooManyPageRefs { pages, budget });
        }
        self.produce(u64::from(count) * PAGE as u64)?;
        self.page_refs = pages;
        Ok(())
    }

    /// Feeds the next bytes; `sink` receives what they hold, in order.
    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(Decoded<'_>) -> Result<(), String>) -> Result<(), DeltaError> {
        self.input = self.input.saturating_add(input.len() as u64);
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
                DeltaRecord::Raw { len } => {
                    self.produce(u64::from(len))?;
                    self.raw_left = len;
                }
                DeltaRecord::Zstd { len, raw_len } if raw_len > MAX_RAW || len > max_zstd_len() || len == 0 => {
                    return Err(DeltaError::RawTooLarge(raw_len.max(len)))
                }
                DeltaRecord::Zstd { len, raw_len } => {
                    self.produce(u64::from(raw_len))?;
                    self.zstd = Some((Vec::with_capacity(len as usize), raw_len));
                    self.zstd_left = len;
                }
                DeltaRecord::Pages { index, count } => {
                    self.refer(index, count)?;
                    sink(Decoded::Pages { index, count }).map_err(DeltaError::Sink)?
                }
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
