//! Where the pages of an archive are: [`TarPager`] cuts a tar stream into
//! raw bytes and the 4 KiB pages of its members' data, as it arrives in
//! slices of any size.
//!
//! Pages are counted from the start of each member's data, so that a page
//! of memory (or of a file) is found again wherever its member sits in the
//! next archive. The source (finding pages the target holds) and the
//! target (numbering the pages of its base) both cut with this pager: a
//! change to what it calls a page changes the bytes on the wire. The tar
//! framing itself is [`crate::tarwalk::TarWalker`]'s.

use super::PAGE;
use crate::tarwalk::{Step, TarWalker, BLOCK};

/// A piece of the archive, as [`TarPager`] cuts it.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes to send as they are.
    Raw(&'a [u8]),
    /// One whole page of a paged member's data (every regular member's, or
    /// only CRIU's page images: [`TarPager::criu_pages_only`]).
    Page(&'a [u8]),
}

/// The all-zero blocks that end an archive, handed back as they came.
const ZEROS: [u8; BLOCK] = [0; BLOCK];

/// Cuts bytes that arrive in slices of any size into 4 KiB pages: whole
/// pages straight from the input, a page split across slices collected
/// until it is whole. Shared by the tar pager and the post-copy tunnel's
/// reading of CRIU's page-server replies.
#[derive(Debug, Default)]
pub struct PageCutter {
    page: Vec<u8>,
}

impl PageCutter {
    /// Cuts at most `max` pages from the front of `data`, each handed to
    /// `emit` as [`Piece::Page`]; the bytes of a page not yet whole are
    /// kept. Returns the bytes taken from `data` and the pages emitted.
    pub fn cut(&mut self, mut data: &[u8], max: u64, emit: &mut impl FnMut(Piece<'_>)) -> (usize, u64) {
        let (len, mut pages) = (data.len(), 0);
        while !data.is_empty() && pages < max {
            if self.page.is_empty() && data.len() >= PAGE {
                emit(Piece::Page(&data[..PAGE]));
                data = &data[PAGE..];
                pages += 1;
                continue;
            }
            let take = (PAGE - self.page.len()).min(data.len());
            self.page.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.page.len() == PAGE {
                emit(Piece::Page(&self.page));
                self.page.clear();
                pages += 1;
            }
        }
        (len - data.len(), pages)
    }

    /// The bytes of a page not yet whole.
    pub fn held(&self) -> &[u8] {
        &self.page
    }

    pub fn clear(&mut self) {
        self.page.clear();
    }
}

/// Cuts a tar stream into raw bytes and the 4 KiB pages of its members'
/// data, as the stream arrives in arbitrary slices.
pub struct TarPager {
    walker: TarWalker,
    /// The current member's data is cut into pages.
    paged: bool,
    /// A page being collected (the stream's slices need not hold whole pages).
    page: PageCutter,
    /// Page only CRIU `pages-*.img` members (else every regular member).
    criu_pages_only: bool,
}

impl Default for TarPager {
    /// Pages every regular member.
    fn default() -> Self {
        TarPager { walker: TarWalker::default(), paged: false, page: PageCutter::default(), criu_pages_only: false }
    }
}

impl TarPager {
    /// Pages only CRIU's page images.
    pub fn criu_pages_only() -> Self {
        TarPager { criu_pages_only: true, ..Default::default() }
    }
}

/// Whether a member named `path` holds CRIU page data.
fn is_pages_file(path: &[u8]) -> bool {
    let base = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    base.starts_with(b"pages-") && base.ends_with(b".img")
}

impl TarPager {
    /// Feeds the next bytes of the stream; `emit` receives them back as
    /// pieces, in order, every byte exactly once.
    pub fn feed(&mut self, mut input: &[u8], emit: &mut impl FnMut(Piece<'_>)) {
        while let Some(step) = self.walker.next(&mut input) {
            match step {
                Step::Header { header, .. } => {
                    // Only the member's own header counts: an extended
                    // header's longer name is not looked at (a guess
                    // missed costs bytes, never correctness).
                    let regular = header.is_regular();
                    self.paged = if self.criu_pages_only { regular && is_pages_file(&header.path()) } else { regular };
                    emit(Piece::Raw(header.as_bytes()));
                }
                Step::Zeros => emit(Piece::Raw(&ZEROS)),
                // Something unparseable: it and the rest go raw.
                Step::Unparsed(header) => emit(Piece::Raw(header.as_bytes())),
                Step::Data { bytes, left } if self.paged => self.cut_pages(bytes, left, emit),
                Step::Data { bytes, .. } | Step::Pad(bytes) | Step::Opaque(bytes) => emit(Piece::Raw(bytes)),
            }
        }
    }

    /// Cuts `data`, the next bytes of a paged member with `left` more to
    /// come, into pages; a short tail at the member's end is raw.
    fn cut_pages(&mut self, data: &[u8], left: u64, emit: &mut impl FnMut(Piece<'_>)) {
        self.page.cut(data, u64::MAX, emit);
        if left == 0 && !self.page.held().is_empty() {
            // A short tail: not a page.
            emit(Piece::Raw(self.page.held()));
            self.page.clear();
        }
    }

    /// The stream ended: hands back whatever is still buffered (a header or
    /// page cut short) as raw bytes, so that no byte is ever lost.
    pub fn finish(&mut self, emit: &mut impl FnMut(Piece<'_>)) {
        for held in [self.walker.pending(), self.page.held()] {
            if !held.is_empty() {
                emit(Piece::Raw(held));
            }
        }
        self.walker = TarWalker::default();
        self.page.clear();
    }
}
