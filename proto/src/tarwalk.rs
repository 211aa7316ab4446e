//! A tar stream walked as it arrives, without IO: the one place where tern
//! reads tar headers.
//!
//! Two readers cut a checkpoint archive on the fly: the delta pager
//! ([`crate::delta::TarPager`], which decides which bytes are pages and so
//! what goes on the wire) and the target's unpacker (`TarSplit` in the
//! agent, which writes `checkpoint/` members into place). Both need the
//! same framing (512-byte header blocks, each member's data, the padding
//! to the next block) from bytes that come in slices of any size;
//! [`TarWalker`] does it once for both, and [`TarHeader`] reads the few
//! header fields they look at.
//!
//! What the walker knows of the extended formats: it names the headers
//! (PAX `x` and `g`, GNU long name `L` and long link `K`,
//! [`TarHeader::is_extended`]) and says which member follows one
//! ([`Step::Header`]'s `follows_extended`). It does not apply them: a
//! member's path is always the one in its own header. That is enough for
//! its readers: the pager only guesses where pages are (a wrong guess
//! costs bytes, never correctness), and the unpacker never places a
//! member whose real name only an extended header would give.
//!
//! Sizes come from the peer: none is ever allocated. The walker holds one
//! header block at most, and a member's size only counts bytes down. A
//! size whose padded length would not fit in 64 bits
//! ([`TarError::SizeOverflow`]) is refused like one that does not parse:
//! no archive can hold such a member, and a reader that rounds it up to
//! whole blocks would overflow.

use std::borrow::Cow;

/// The tar block: headers are one block, data is padded to whole blocks.
pub const BLOCK: usize = 512;

/// One 512-byte header block, owned (it outlives the slice it came in).
#[derive(Clone, PartialEq, Eq)]
pub struct TarHeader {
    block: [u8; BLOCK],
}

impl std::fmt::Debug for TarHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarHeader").field("path", &String::from_utf8_lossy(&self.path())).field("typeflag", &self.typeflag()).finish()
    }
}

/// Why a header's size cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("the tar header's size field is neither octal nor base-256, or does not fit in 64 bits")]
    BadSize,
    #[error("the tar header announces {0} bytes: rounded up to whole {BLOCK}-byte blocks, that overflows 64 bits")]
    SizeOverflow(u64),
}

/// `size` rounded up to whole blocks (the data and its padding), or
/// [`TarError::SizeOverflow`] when that does not fit in a `u64`.
pub fn padded(size: u64) -> Result<u64, TarError> {
    size.div_ceil(BLOCK as u64).checked_mul(BLOCK as u64).ok_or(TarError::SizeOverflow(size))
}

/// Reads a tar numeric field: octal text (spaces ignored, empty is 0, ends
/// at a NUL), or base-256 when the high bit of the first byte is set.
/// `None` when it is neither, or does not fit in 64 bits.
fn number(field: &[u8]) -> Option<u64> {
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

/// A field up to its first NUL.
fn c_str(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

impl TarHeader {
    pub fn new(block: [u8; BLOCK]) -> Self {
        TarHeader { block }
    }

    /// The block as it came.
    pub fn as_bytes(&self) -> &[u8; BLOCK] {
        &self.block
    }

    /// The length of the member's data (without padding), when it parses
    /// and its padded length fits in 64 bits ([`TarHeader::data_size`]).
    pub fn size(&self) -> Option<u64> {
        self.data_size().ok()
    }

    /// The length of the member's data (without padding), or why it cannot
    /// be used: a size field that does not parse, or a size whose padded
    /// length ([`padded`]) overflows.
    pub fn data_size(&self) -> Result<u64, TarError> {
        let size = number(&self.block[124..136]).ok_or(TarError::BadSize)?;
        padded(size)?;
        Ok(size)
    }

    /// The member's data and padding: the bytes between this header and
    /// the next one.
    pub fn padded_size(&self) -> Result<u64, TarError> {
        padded(self.data_size()?)
    }

    /// The permission bits and the rest of the mode field, when it parses.
    pub fn mode(&self) -> Option<u32> {
        number(&self.block[100..108]).map(|m| m as u32)
    }

    pub fn typeflag(&self) -> u8 {
        self.block[156]
    }

    /// A regular file (`0`, or NUL in old archives).
    pub fn is_regular(&self) -> bool {
        matches!(self.typeflag(), b'0' | 0)
    }

    pub fn is_symlink(&self) -> bool {
        self.typeflag() == b'2'
    }

    pub fn is_dir(&self) -> bool {
        self.typeflag() == b'5'
    }

    /// A PAX header (for the next member, or global) or a GNU long name or
    /// long link: a header whose data describes the member after it.
    pub fn is_extended(&self) -> bool {
        matches!(self.typeflag(), b'x' | b'g' | b'L' | b'K')
    }

    /// The member's path as its own header gives it: in a POSIX ustar
    /// header (magic `ustar\0`, version `00`) the prefix field, when set,
    /// then `/` and the name; otherwise the name alone (GNU headers use the
    /// prefix's bytes for other fields).
    pub fn path(&self) -> Cow<'_, [u8]> {
        let b = &self.block;
        let name = c_str(&b[0..100]);
        let ustar = &b[257..263] == b"ustar\0" && &b[263..265] == b"00";
        let prefix = c_str(&b[345..500]);
        if !ustar || prefix.is_empty() {
            return Cow::Borrowed(name);
        }
        let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
        path.extend_from_slice(prefix);
        path.push(b'/');
        path.extend_from_slice(name);
        Cow::Owned(path)
    }

    /// A link's target, unless empty.
    pub fn link_name(&self) -> Option<&[u8]> {
        Some(c_str(&self.block[157..257])).filter(|n| !n.is_empty())
    }
}

/// What the walker found next in the stream, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'i> {
    /// A member's header block, whole; `size` bytes of data follow (as
    /// [`Step::Data`]), then the padding to the next block ([`Step::Pad`]).
    /// `follows_extended`: the header before it was an extended one.
    Header { header: TarHeader, size: u64, follows_extended: bool },
    /// An all-zero block: the end of the archive (tar writes two).
    Zeros,
    /// A header block whose size does not parse, or overflows once padded
    /// ([`TarHeader::data_size`]): the walker cannot know where the member ends, and everything after it is [`Step::Opaque`].
    Unparsed(TarHeader),
    /// Bytes of the current member's data; `left` more of it follow.
    Data { bytes: &'i [u8], left: u64 },
    /// Padding after a member's data.
    Pad(&'i [u8]),
    /// Bytes after an unparseable header.
    Opaque(&'i [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Inside a member's data, then `pad` bytes of padding.
    Data { left: u64, pad: u64 },
    /// The padding to the next block boundary.
    Pad { left: u64 },
    /// After an unparseable header: the rest is not understood.
    Opaque,
}

/// Walks a tar stream fed in slices of any size (module docs).
#[derive(Debug)]
pub struct TarWalker {
    state: State,
    /// A header block being collected.
    block: Vec<u8>,
    /// The last header was an extended one.
    extended: bool,
}

impl Default for TarWalker {
    fn default() -> Self {
        TarWalker { state: State::Header, block: Vec::with_capacity(BLOCK), extended: false }
    }
}

impl TarWalker {
    /// The next step found in `input`, which it advances past the bytes the
    /// step covers; `None` once `input` is used up (a header block cut
    /// short is kept until the next call). Every byte comes back exactly
    /// once, in order: in a step, or in [`TarWalker::pending`].
    pub fn next<'i>(&mut self, input: &mut &'i [u8]) -> Option<Step<'i>> {
        while !input.is_empty() {
            match self.state {
                State::Opaque => return Some(Step::Opaque(std::mem::take(input))),
                State::Header => {
                    let take = (BLOCK - self.block.len()).min(input.len());
                    self.block.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if self.block.len() < BLOCK {
                        continue;
                    }
                    let block: [u8; BLOCK] = self.block[..].try_into().expect("a whole block");
                    self.block.clear();
                    return Some(self.header(TarHeader::new(block)));
                }
                State::Data { left, pad } => {
                    let (bytes, rest) = input.split_at(left.min(input.len() as u64) as usize);
                    *input = rest;
                    let left = left - bytes.len() as u64;
                    self.state = match (left, pad) {
                        (0, 0) => State::Header,
                        (0, pad) => State::Pad { left: pad },
                        (left, pad) => State::Data { left, pad },
                    };
                    return Some(Step::Data { bytes, left });
                }
                State::Pad { left } => {
                    let (bytes, rest) = input.split_at(left.min(input.len() as u64) as usize);
                    *input = rest;
                    let left = left - bytes.len() as u64;
                    self.state = if left == 0 { State::Header } else { State::Pad { left } };
                    return Some(Step::Pad(bytes));
                }
            }
        }
        None
    }

    /// A whole header block arrived.
    fn header(&mut self, header: TarHeader) -> Step<'static> {
        if header.block.iter().all(|b| *b == 0) {
            // End-of-archive blocks: more headers may follow all the same.
            return Step::Zeros;
        }
        let Some(size) = header.size() else {
            self.state = State::Opaque;
            return Step::Unparsed(header);
        };
        let follows_extended = std::mem::replace(&mut self.extended, header.is_extended());
        // Cannot overflow: `size()` refused sizes whose padding would.
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.state = match (size, pad) {
            (0, _) => State::Header,
            (left, pad) => State::Data { left, pad },
        };
        Step::Header { header, size, follows_extended }
    }

    /// The bytes of a header block cut short, held until more come.
    pub fn pending(&self) -> &[u8] {
        &self.block
    }

    /// Between two members: nothing of one is still to come.
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.block.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, typeflag: u8, size: &[u8]) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..124 + size.len()].copy_from_slice(size);
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h
    }

    /// Every step of `archive` fed in slices of `step`, as (kind, bytes).
    fn walk(archive: &[u8], step: usize) -> (Vec<(char, Vec<u8>)>, TarWalker) {
        let mut w = TarWalker::default();
        let mut out: Vec<(char, Vec<u8>)> = Vec::new();
        for mut chunk in archive.chunks(step) {
            while let Some(s) = w.next(&mut chunk) {
                let (k, b) = match s {
                    Step::Header { header, follows_extended, .. } => (if follows_extended { 'E' } else { 'H' }, header.as_bytes().to_vec()),
                    Step::Zeros => ('Z', vec![0; BLOCK]),
                    Step::Unparsed(h) => ('U', h.as_bytes().to_vec()),
                    Step::Data { bytes, .. } => ('D', bytes.to_vec()),
                    Step::Pad(b) => ('P', b.to_vec()),
                    Step::Opaque(b) => ('O', b.to_vec()),
                };
                // Joins what one slicing cuts apart, to compare slicings.
                match out.last_mut() {
                    Some((last, bytes)) if *last == k && matches!(k, 'D' | 'P' | 'O') => bytes.extend(b),
                    _ => out.push((k, b)),
                }
            }
        }
        (out, w)
    }

    #[test]
    fn walks_members_whatever_the_slicing() {
        let mut archive = header("a", b'0', b"00000000005").to_vec();
        archive.extend_from_slice(b"hello");
        archive.resize(1024, 0);
        archive.extend_from_slice(&header("././@LongLink", b'L', b"00000000003"));
        archive.extend_from_slice(b"abc");
        archive.resize(2048, 0);
        archive.extend_from_slice(&header("b", b'5', b"0"));
        archive.extend_from_slice(&[0; 2 * BLOCK]);
        let (whole, w) = walk(&archive, archive.len());
        let kinds: String = whole.iter().map(|s| s.0).collect();
        assert_eq!(kinds, "HDPHDPEZZ");
        assert!(w.at_boundary());
        assert_eq!(whole.iter().flat_map(|s| s.1.clone()).collect::<Vec<u8>>(), archive);
        for step in [1, 7, 511, 512, 513, 4096] {
            let (steps, w) = walk(&archive, step);
            assert_eq!(steps, whole, "step {step}");
            assert!(w.at_boundary());
        }
        let (_, w) = walk(&archive[..700], 100);
        assert!(!w.at_boundary(), "inside a member's padding");
        let (_, w) = walk(&archive[..1100], 100);
        assert_eq!(w.pending().len(), 76, "a header cut short is held");
    }

    #[test]
    fn reads_the_fields_its_readers_need() {
        let mut h = header("pages-1.img", b'0', b"0000001000 ");
        h[345..355].copy_from_slice(b"checkpoint");
        let h = TarHeader::new(h);
        assert_eq!((h.size(), h.mode(), h.is_regular()), (Some(0o1000), Some(0o644), true));
        assert_eq!(&*h.path(), b"checkpoint/pages-1.img");
        assert_eq!(h.link_name(), None);
        // A GNU header: the prefix's bytes are not a prefix.
        let mut g = header("x", b'2', b"0");
        g[257..265].copy_from_slice(b"ustar  \0");
        g[345] = b'7';
        g[157..162].copy_from_slice(b"../pa");
        let g = TarHeader::new(g);
        assert_eq!((&*g.path(), g.link_name(), g.is_symlink()), (&b"x"[..], Some(&b"../pa"[..]), true));
        // Base-256 sizes, and ones that do not fit.
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(TarHeader::new(header("a", b'0', &big)).size(), Some(1 << 40));
        big[1] = 1;
        assert_eq!(TarHeader::new(header("a", b'0', &big)).size(), None);
        assert_eq!(TarHeader::new(header("a", b'0', b"12z")).size(), None);
    }

    #[test]
    fn an_unparseable_size_makes_the_rest_opaque() {
        let mut archive = header("a", b'0', b"zz").to_vec();
        archive.extend_from_slice(&[3; 1000]);
        let (steps, w) = walk(&archive, 300);
        assert_eq!(steps.iter().map(|s| s.0).collect::<String>(), "UO");
        assert_eq!(steps[1].1.len(), 1000);
        assert!(!w.at_boundary());
    }

    #[test]
    fn a_tar_header_whose_size_overflows_is_refused() {
        // The largest base-256 size: rounding it up to whole blocks overflows.
        let mut size = [0xffu8; 12];
        size[0] = 0x80;
        size[1..4].fill(0);
        let h = TarHeader::new(header("a", b'0', &size));
        assert_eq!(h.data_size(), Err(TarError::SizeOverflow(u64::MAX)));
        assert_eq!((h.size(), h.padded_size()), (None, Err(TarError::SizeOverflow(u64::MAX))));
        let mut archive = h.as_bytes().to_vec();
        archive.extend_from_slice(&[1; 700]);
        let (steps, _) = walk(&archive, 100);
        assert_eq!(steps.iter().map(|s| s.0).collect::<String>(), "UO");
        // The largest size that still pads, and the first that does not.
        let last = u64::MAX - 511;
        assert_eq!(padded(last), Ok(last));
        assert_eq!(padded(last + 1), Err(TarError::SizeOverflow(last + 1)));
        assert_eq!((padded(0), padded(1), padded(512), padded(513)), (Ok(0), Ok(512), Ok(512), Ok(1024)));
        assert_eq!(TarHeader::new(header("a", b'0', b"zz")).data_size(), Err(TarError::BadSize));
    }

    #[test]
    fn a_huge_size_is_counted_down_never_allocated() {
        let mut size = [0xffu8; 12];
        size[0] = 0x80;
        size[1..4].fill(0);
        // 2^63 - 1 bytes: huge, and still a whole number of blocks once padded.
        size[4] = 0x7f;
        let mut archive = header("a", b'0', &size).to_vec();
        archive.extend_from_slice(&[1; 5000]);
        let (steps, w) = walk(&archive, 1000);
        assert_eq!(steps.iter().map(|s| s.0).collect::<String>(), "HD");
        assert!(!w.at_boundary());
    }
}
