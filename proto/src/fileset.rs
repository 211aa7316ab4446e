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
    File { name: String, len: u64 },
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
    let bad = name.is_empty()
        || name.len() > MAX_NAME
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0');
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
}
