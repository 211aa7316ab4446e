//! File sets: the regular files of one folder (a CRIU image directory of a
//! pre-copy round) on one data stream.
//!
//! ```text
//!  DataHeader{kind: Round(n)}
//!  FileEntry::File{name, len}  <len raw bytes>
//!  FileEntry::File{name, len}  <len raw bytes>
//!  ...
//!  FileEntry::End
//! ```
//!
//! Names are single path components, checked by [`check_name`] before the
//! receiver creates anything: a hostile peer cannot write outside the
//! folder it is given, nor make the receiver create unbounded numbers of
//! files. Lengths are bounded too ([`FileSetLimits`]): each file's, and
//! the whole set's, refused at the entry that announces too much, before
//! any of its bytes are handed on. The blake3 digest announced on the control stream covers every
//! byte of the stream after the header, entries included.

use crate::frame::WireMessage;
use serde::{Deserialize, Serialize};

/// At most this many files in one set (a CRIU image directory of a large
/// container holds a few thousand).
pub const MAX_FILES: usize = 65_536;
/// The longest file name accepted.
pub const MAX_NAME: usize = 255;
/// The largest file a set may hold by default (1 TiB): a round's page
/// images are at most the container's memory.
pub const MAX_FILE_LEN: u64 = 1 << 40;
/// The most bytes a whole set may announce by default (4 TiB).
pub const MAX_SET_BYTES: u64 = 4 << 40;

/// What one incoming set may hold. The defaults are generous constants;
/// a receiver that knows what to expect says so with
/// [`FileSetLimits::expecting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSetLimits {
    /// At most this many files (never above [`MAX_FILES`]).
    pub max_files: usize,
    /// No file longer than this.
    pub max_file_len: u64,
    /// The files' lengths add up to no more than this.
    pub max_total: u64,
}

impl Default for FileSetLimits {
    fn default() -> Self {
        FileSetLimits { max_files: MAX_FILES, max_file_len: MAX_FILE_LEN, max_total: MAX_SET_BYTES }
    }
}

impl FileSetLimits {
    /// A set of at most `bytes` bytes of file data in all (for a pre-copy
    /// round: the container's memory and the images' metadata, with slack),
    /// never more than the defaults.
    pub fn expecting(bytes: u64) -> Self {
        let d = FileSetLimits::default();
        FileSetLimits { max_total: bytes.min(d.max_total), max_file_len: bytes.min(d.max_file_len), ..d }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileEntry {
    Invalid,
    /// `len` bytes of the file `name` follow.
    File {
        name: String,
        len: u64,
    },
    /// No more files.
    End,
}

impl WireMessage for FileEntry {
    const NAME: &'static str = "FileEntry";
    fn is_invalid(&self) -> bool {
        matches!(self, FileEntry::Invalid)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileSetError {
    #[error("the file name {0:?} is not a plain file name (empty, too long, `.`/`..`, or contains `/` or NUL)")]
    BadName(String),
    #[error("the file set holds more than {0} files")]
    TooManyFiles(usize),
    #[error("the file {name:?} announces {len} bytes, above the limit of {limit}")]
    FileTooLarge { name: String, len: u64, limit: u64 },
    #[error("the file {name:?} would bring the set above its limit of {limit} bytes")]
    SetTooLarge { name: String, limit: u64 },
    #[error("the file {0:?} appears twice in the file set")]
    Duplicate(String),
}

/// A name the receiver may create inside its folder: one path component.
pub fn check_name(name: &str) -> Result<(), FileSetError> {
    let bad = name.is_empty() || name.len() > MAX_NAME || name == "." || name == ".." || name.contains('/') || name.contains('\0');
    if bad {
        Err(FileSetError::BadName(name.to_string()))
    } else {
        Ok(())
    }
}

/// Tracks the names of one incoming set: each valid, each once, not too many.
pub struct NameCheck {
    seen: std::collections::HashSet<String>,
    max_files: usize,
}

impl Default for NameCheck {
    fn default() -> Self {
        NameCheck::new(MAX_FILES)
    }
}

impl NameCheck {
    /// Admits at most `max_files` names (never above [`MAX_FILES`]).
    pub fn new(max_files: usize) -> Self {
        NameCheck { seen: Default::default(), max_files: max_files.min(MAX_FILES) }
    }

    pub fn admit(&mut self, name: &str) -> Result<(), FileSetError> {
        check_name(name)?;
        if self.seen.len() >= self.max_files {
            return Err(FileSetError::TooManyFiles(self.max_files));
        }
        if !self.seen.insert(name.to_string()) {
            return Err(FileSetError::Duplicate(name.to_string()));
        }
        Ok(())
    }
}

/// What [`FileSetDecoder`] found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum FileEvent<'a> {
    /// A file begins: `len` bytes of data events follow.
    Start {
        name: &'a str,
        len: u64,
    },
    Data(&'a [u8]),
    /// The current file is complete.
    EndFile,
}

#[derive(Debug, thiserror::Error)]
pub enum FileSetStreamError {
    #[error("bad file entry: {0}")]
    Frame(#[from] crate::frame::FrameError),
    #[error(transparent)]
    Name(#[from] FileSetError),
    #[error("{0} bytes follow the end of the file set")]
    AfterEnd(usize),
    #[error("the file set stream ended early (inside a file or before its End entry)")]
    Unfinished,
    #[error("{0}")]
    Sink(String),
}

/// Reads a file set from a stream arriving in arbitrary slices, checking
/// every name. Holds at most one entry header between calls.
pub struct FileSetDecoder {
    head: crate::frame::FrameCollector,
    left: u64,
    in_file: bool,
    ended: bool,
    names: NameCheck,
    limits: FileSetLimits,
    /// The lengths the entries so far announced, added up.
    announced: u64,
}

/// The largest encoded entry: a name of [`MAX_NAME`] bytes and its length.
const MAX_ENTRY: usize = MAX_NAME + 32;

impl Default for FileSetDecoder {
    /// The default limits ([`FileSetLimits::default`]).
    fn default() -> Self {
        FileSetDecoder::with_limits(FileSetLimits::default())
    }
}

impl FileSetDecoder {
    pub fn with_limits(limits: FileSetLimits) -> Self {
        FileSetDecoder {
            head: crate::frame::FrameCollector::new(MAX_ENTRY),
            left: 0,
            in_file: false,
            ended: false,
            names: NameCheck::new(limits.max_files),
            limits,
            announced: 0,
        }
    }

    /// Checks an entry's length against the limits and counts it.
    fn admit_len(&mut self, name: &str, len: u64) -> Result<(), FileSetError> {
        if len > self.limits.max_file_len {
            return Err(FileSetError::FileTooLarge { name: name.to_string(), len, limit: self.limits.max_file_len });
        }
        match self.announced.checked_add(len) {
            Some(total) if total <= self.limits.max_total => {
                self.announced = total;
                Ok(())
            }
            _ => Err(FileSetError::SetTooLarge { name: name.to_string(), limit: self.limits.max_total }),
        }
    }

    pub fn feed(&mut self, mut input: &[u8], sink: &mut impl FnMut(FileEvent<'_>) -> Result<(), String>) -> Result<(), FileSetStreamError> {
        while !input.is_empty() {
            if self.ended {
                return Err(FileSetStreamError::AfterEnd(input.len()));
            }
            if self.in_file {
                let take = (self.left.min(input.len() as u64)) as usize;
                if take > 0 {
                    sink(FileEvent::Data(&input[..take])).map_err(FileSetStreamError::Sink)?;
                }
                self.left -= take as u64;
                input = &input[take..];
                if self.left == 0 {
                    self.in_file = false;
                    sink(FileEvent::EndFile).map_err(FileSetStreamError::Sink)?;
                }
                continue;
            }
            let Some(entry) = self.head.push::<FileEntry>(&mut input)? else { continue };
            match entry {
                FileEntry::File { name, len } => {
                    self.names.admit(&name)?;
                    self.admit_len(&name, len)?;
                    sink(FileEvent::Start { name: &name, len }).map_err(FileSetStreamError::Sink)?;
                    if len == 0 {
                        sink(FileEvent::EndFile).map_err(FileSetStreamError::Sink)?;
                    } else {
                        self.in_file = true;
                        self.left = len;
                    }
                }
                FileEntry::End => self.ended = true,
                FileEntry::Invalid => return Err(crate::frame::FrameError::Invalid(FileEntry::NAME).into()),
            }
        }
        Ok(())
    }

    /// Call at the end of the stream: it must have ended with `End`.
    pub fn finish(&self) -> Result<(), FileSetStreamError> {
        if self.ended {
            Ok(())
        } else {
            Err(FileSetStreamError::Unfinished)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass() {
        for ok in ["pages-1.img", "inventory.img", "a", &"x".repeat(MAX_NAME)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../etc/passwd", "/etc/passwd", "a/b", "a\0b", &"x".repeat(MAX_NAME + 1)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn duplicates_are_refused() {
        let mut c = NameCheck::default();
        c.admit("pages-1.img").unwrap();
        assert_eq!(c.admit("pages-1.img"), Err(FileSetError::Duplicate("pages-1.img".into())));
        assert!(c.admit("../x").is_err());
    }

    fn encode_set(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            out.extend(crate::frame::encode(&FileEntry::File { name: name.to_string(), len: data.len() as u64 }).unwrap());
            out.extend_from_slice(data);
        }
        out.extend(crate::frame::encode(&FileEntry::End).unwrap());
        out
    }

    fn decode_set(wire: &[u8], step: usize) -> Result<Vec<(String, Vec<u8>)>, FileSetStreamError> {
        let mut dec = FileSetDecoder::default();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        let mut open = false;
        for chunk in wire.chunks(step) {
            dec.feed(chunk, &mut |e| {
                match e {
                    FileEvent::Start { name, .. } => {
                        assert!(!open);
                        open = true;
                        files.push((name.to_string(), Vec::new()));
                    }
                    FileEvent::Data(b) => files.last_mut().unwrap().1.extend_from_slice(b),
                    FileEvent::EndFile => open = false,
                }
                Ok(())
            })?;
        }
        dec.finish()?;
        assert!(!open, "a file was left open");
        Ok(files)
    }

    #[test]
    fn file_sets_round_trip_whatever_the_slicing() {
        let files = vec![("pages-1.img", vec![7u8; 10_000]), ("empty.img", vec![]), ("inventory.img", b"inv".to_vec())];
        let wire = encode_set(&files);
        for step in [1, 2, 5, 64, 4096, wire.len()] {
            let got = decode_set(&wire, step).unwrap();
            let want: Vec<(String, Vec<u8>)> = files.iter().map(|(n, d)| (n.to_string(), d.clone())).collect();
            assert_eq!(got, want, "step {step}");
        }
    }

    fn decode_limited(wire: &[u8], limits: FileSetLimits) -> Result<u64, FileSetStreamError> {
        let mut dec = FileSetDecoder::with_limits(limits);
        let mut got = 0u64;
        dec.feed(wire, &mut |e| {
            if let FileEvent::Data(b) = e {
                got += b.len() as u64;
            }
            Ok(())
        })?;
        dec.finish()?;
        Ok(got)
    }

    #[test]
    fn lengths_and_counts_are_bounded() {
        let files = [("a", vec![1; 100]), ("b", vec![2; 50])];
        let wire = encode_set(&files);
        assert_eq!(decode_limited(&wire, FileSetLimits::expecting(150)).unwrap(), 150);
        // One file too long: refused at its entry, before any of its bytes.
        let e = decode_limited(&wire, FileSetLimits { max_file_len: 99, ..FileSetLimits::default() }).unwrap_err();
        assert!(matches!(e, FileSetStreamError::Name(FileSetError::FileTooLarge { len: 100, limit: 99, .. })), "{e}");
        // The set too long in all.
        let e = decode_limited(&wire, FileSetLimits::expecting(149)).unwrap_err();
        assert!(matches!(e, FileSetStreamError::Name(FileSetError::SetTooLarge { limit: 149, .. })), "{e}");
        // Too many files.
        let e = decode_limited(&wire, FileSetLimits { max_files: 1, ..FileSetLimits::default() }).unwrap_err();
        assert!(matches!(e, FileSetStreamError::Name(FileSetError::TooManyFiles(1))), "{e}");
        // Lengths that would overflow a u64 when added up.
        let mut huge = crate::frame::encode(&FileEntry::File { name: "a".into(), len: 1 }).unwrap();
        huge.push(7);
        huge.extend(crate::frame::encode(&FileEntry::File { name: "b".into(), len: u64::MAX }).unwrap());
        let e = decode_limited(&huge, FileSetLimits { max_file_len: u64::MAX, max_total: u64::MAX, ..FileSetLimits::default() });
        assert!(matches!(e, Err(FileSetStreamError::Name(FileSetError::SetTooLarge { .. }))));
        // The default refuses a file of u64::MAX bytes outright.
        let one = crate::frame::encode(&FileEntry::File { name: "a".into(), len: u64::MAX }).unwrap();
        assert!(matches!(decode_limited(&one, FileSetLimits::default()), Err(FileSetStreamError::Name(FileSetError::FileTooLarge { .. }))));
        assert_eq!(FileSetLimits::expecting(u64::MAX), FileSetLimits::default());
    }

    #[test]
    fn hostile_file_sets_are_refused() {
        let traversal = encode_set(&[("../../etc/passwd", b"x".to_vec())]);
        assert!(matches!(decode_set(&traversal, 7), Err(FileSetStreamError::Name(FileSetError::BadName(_)))));
        let dup = encode_set(&[("a", b"1".to_vec()), ("a", b"2".to_vec())]);
        assert!(matches!(decode_set(&dup, 7), Err(FileSetStreamError::Name(FileSetError::Duplicate(_)))));
        let mut trailing = encode_set(&[("a", b"1".to_vec())]);
        trailing.push(0);
        assert!(matches!(decode_set(&trailing, 100), Err(FileSetStreamError::AfterEnd(1))));
        let wire = encode_set(&[("a", vec![1; 100])]);
        assert!(matches!(decode_set(&wire[..50], 10), Err(FileSetStreamError::Unfinished)));
        assert!(matches!(decode_set(&[0xff, 0xff, 0xff, 0xff], 10), Err(FileSetStreamError::Frame(_))));
        for n in 0..80u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(91)).collect();
            let _ = decode_set(&junk, 3);
        }
    }
}
