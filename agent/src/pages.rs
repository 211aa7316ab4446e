//! The two halves of content-addressed pre-copy's memory.
//!
//! The base is a full checkpoint archive taken while the container ran.
//! Both sides cut it into pages with the same [`TarPager`] and number them
//! 0, 1, 2, ... in archive order:
//!
//! * [`PageIndex`] (source): page hash → page number, built as the base is
//!   sent, asked for every page of the final archive.
//! * [`PageStore`] (target): page number → where those bytes sit in its copy
//!   of the base, to rebuild the final archive from delta records.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use tern_proto::delta::{Piece, TarPager, PAGE};

/// Page hashes of the base, for the source. Keys are the first 128 bits of
/// blake3: a false match needs a 128-bit collision, and the whole archive's
/// blake3 is checked on the target regardless. An entry (key and page
/// number) per page of the base.
#[derive(Default)]
pub struct PageIndex {
    map: HashMap<u128, u32>,
    pages: u32,
    pager: TarPager,
}

fn key(page: &[u8]) -> u128 {
    let h = blake3::hash(page);
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
}

impl PageIndex {
    /// An index sized for about `pages` pages: built by doubling, it would
    /// hold its old and new tables at once each time it grows.
    pub fn with_capacity(pages: usize) -> Self {
        PageIndex { map: HashMap::with_capacity(pages), ..Default::default() }
    }

    /// Adds the next bytes of the base archive.
    pub fn add(&mut self, bytes: &[u8]) {
        let mut pager = std::mem::take(&mut self.pager);
        pager.feed(bytes, &mut |piece| {
            if let Piece::Page(p) = piece {
                self.map.entry(key(p)).or_insert(self.pages);
                self.pages += 1;
            }
        });
        self.pager = pager;
    }

    /// The base page holding exactly `page`, if any.
    pub fn lookup(&self, page: &[u8]) -> Option<u32> {
        self.map.get(&key(page)).copied()
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }
}

/// Where the base's pages sit in the target's copy of it, as the archive
/// arrives: feed it every byte, in order.
#[derive(Default)]
pub struct PageOffsets {
    offsets: Vec<u64>,
    at: u64,
    pager: TarPager,
}

impl PageOffsets {
    pub fn add(&mut self, bytes: &[u8]) {
        let mut pager = std::mem::take(&mut self.pager);
        pager.feed(bytes, &mut |piece| {
            let len = match piece {
                Piece::Raw(b) => b.len(),
                Piece::Page(p) => {
                    self.offsets.push(self.at);
                    p.len()
                }
            };
            self.at += len as u64;
        });
        self.pager = pager;
    }

    /// The offsets of pages 0, 1, 2, ... in the base file.
    pub fn finish(self) -> Vec<u64> {
        self.offsets
    }
}

/// The base's pages on the target's disk. The file stays open: a
/// post-copy fill reads it after the staging folder that named it is gone.
pub struct PageStore {
    file: File,
    offsets: Vec<u64>,
}

impl PageStore {
    pub fn open(file: &Path, offsets: Vec<u64>) -> std::io::Result<PageStore> {
        Ok(PageStore { file: File::open(file)?, offsets })
    }

    pub fn pages(&self) -> u32 {
        self.offsets.len() as u32
    }

    /// Where pages `index .. index + count` sit in the file: runs of pages
    /// that lie next to each other there, as (offset, bytes).
    fn runs(&self, index: u32, count: u32) -> std::io::Result<impl Iterator<Item = (u64, usize)> + '_> {
        let end = index
            .checked_add(count)
            .filter(|e| *e as usize <= self.offsets.len())
            .ok_or_else(|| std::io::Error::other(format!("pages {index}..+{count} are outside the base's {} pages", self.offsets.len())))?;
        let mut offsets = self.offsets[index as usize..end as usize].iter().peekable();
        Ok(std::iter::from_fn(move || {
            let start = *offsets.next()?;
            let mut len = PAGE;
            while offsets.next_if(|at| **at == start + len as u64).is_some() {
                len += PAGE;
            }
            Some((start, len))
        }))
    }

    /// Calls `out` with the bytes of pages `index .. index + count`, reading
    /// pages that lie next to each other in the base in one go, in slices of
    /// at most `buf.len()` bytes.
    pub fn copy(&self, index: u32, count: u32, buf: &mut [u8], out: &mut impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        for (mut at, mut left) in self.runs(index, count)? {
            while left > 0 {
                let take = left.min(buf.len());
                self.file.read_exact_at(&mut buf[..take], at)?;
                out(&buf[..take])?;
                (at, left) = (at + take as u64, left - take);
            }
        }
        Ok(())
    }

    /// The bytes of pages `index .. index + count`, read straight into
    /// one buffer (the post-copy tunnel hands them on whole).
    pub fn read(&self, index: u32, count: u32) -> std::io::Result<Vec<u8>> {
        let mut pages = vec![0u8; count as usize * PAGE];
        let mut filled = 0;
        for (at, len) in self.runs(index, count)? {
            self.file.read_exact_at(&mut pages[filled..filled + len], at)?;
            filled += len;
        }
        Ok(pages)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    /// A ustar archive of (name, data) members.
    pub(crate) fn tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn index_and_offsets_number_pages_alike_and_the_store_copies_them() {
        let archive = tar(&[
            ("config.dump", b"{}".to_vec()),
            ("checkpoint/pages-1.img", [page(1), page(2), page(3)].concat()),
            ("volumes/v.tar", [page(4), vec![9; 100]].concat()),
        ]);
        let mut ix = PageIndex::default();
        let mut off = PageOffsets::default();
        for part in archive.chunks(1000) {
            ix.add(part);
            off.add(part);
        }
        assert_eq!(ix.pages(), 4);
        assert_eq!((ix.lookup(&page(1)), ix.lookup(&page(4)), ix.lookup(&page(5))), (Some(0), Some(3), None));
        let offsets = off.finish();
        assert_eq!(offsets.len(), 4);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("base.tar");
        std::fs::write(&file, &archive).unwrap();
        let store = PageStore::open(&file, offsets).unwrap();
        let mut buf = vec![0u8; PAGE + 100];
        let mut got = Vec::new();
        store
            .copy(1, 3, &mut buf, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert_eq!(got, [page(2), page(3), page(4)].concat());
        assert_eq!(store.read(1, 3).unwrap(), got);
        for (i, n) in [(3, 2), (4, 1), (u32::MAX, 2)] {
            assert!(store.copy(i, n, &mut buf, &mut |_| Ok(())).is_err(), "{i}+{n}");
            assert!(store.read(i, n).is_err(), "{i}+{n}");
        }
    }
}
