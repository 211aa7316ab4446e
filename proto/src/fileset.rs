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
//! files. The blake3 digest announced on the control stream covers every
//! byte of the stream after the header, entries included.

use crate::frame::WireMessage;
use serde::{Deserialize, Serialize};

/// At most this many files in one set (a CRIU image directory of a large
/// container holds a few thousand).
pub const MAX_FILES: usize = 65_536;
/// The longest file name accepted.
pub const MAX_NAME: usize = 255;

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
    #[error("the file set holds more than {MAX_FILES} files")]
    TooManyFiles,
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
#[derive(Default)]
pub struct NameCheck {
    seen: std::collections::HashSet<String>,
}

impl NameCheck {
    pub fn admit(&mut self, name: &str) -> Result<(), FileSetError> {
        check_name(name)?;
        if self.seen.len() >= MAX_FILES {
            return Err(FileSetError::TooManyFiles);
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
}

/// The largest encoded entry: a name of [`MAX_NAME`] bytes and its length.
const MAX_ENTRY: usize = MAX_NAME + 32;

impl Default for FileSetDecoder {
    fn default() -> Self {
        FileSetDecoder { head: crate::frame::FrameCollector::new(MAX_ENTRY), left: 0, in_file: false, ended: false, names: NameCheck::default() }
    }
}

impl FileSetDecoder {
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
