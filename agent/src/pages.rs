//! The two halves of content-addressed pre-copy's memory.
//!
//! The base round ships the CRIU `pages-*.img` files of a full dump. Both
//! sides number their pages the same way: file after file in the order they
//! were shipped, 4 KiB after 4 KiB, a short tail not counted.
//!
//! * [`PageIndex`] (source): page hash → page number, built as the base is
//!   shipped, asked for every page of the final dump.
//! * [`PageStore`] (target): page number → where the bytes are, to rebuild
//!   the final archive from delta records.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tern_proto::delta::PAGE;

/// Whether a CRIU image file holds page data.
pub fn is_pages_file(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

/// Page hashes of the base, for the source. Keys are the first 128 bits of
/// blake3: a false match needs a 128-bit collision, and the whole archive's
/// blake3 is checked on the target regardless. 1 GiB of memory costs about
/// 8 MiB here.
#[derive(Default)]
pub struct PageIndex {
    map: HashMap<u128, u32>,
    pages: u32,
    /// Bytes of a page cut across two `add` calls.
    partial: Vec<u8>,
}

fn key(page: &[u8]) -> u128 {
    let h = blake3::hash(page);
    u128::from_le_bytes(h.as_bytes()[..16].try_into().expect("16 bytes"))
}

impl PageIndex {
    /// Adds the next bytes of the current pages file.
    pub fn add(&mut self, mut bytes: &[u8]) {
        if !self.partial.is_empty() {
            let take = (PAGE - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == PAGE {
                let page = std::mem::take(&mut self.partial);
                self.insert(&page);
            }
        }
        let mut chunks = bytes.chunks_exact(PAGE);
        for page in &mut chunks {
            self.insert(page);
        }
        self.partial.extend_from_slice(chunks.remainder());
    }

    /// The current file is done: a short tail is not a page.
    pub fn end_file(&mut self) {
        self.partial.clear();
    }

    fn insert(&mut self, page: &[u8]) {
        self.map.entry(key(page)).or_insert(self.pages);
        self.pages += 1;
    }

    /// The base page holding exactly `page`, if any.
    pub fn lookup(&self, page: &[u8]) -> Option<u32> {
        self.map.get(&key(page)).copied()
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }
}

/// The base's pages on the target's disk.
pub struct PageStore {
    /// (file, first page number, pages in it), in shipping order.
    files: Vec<(PathBuf, u32, u32)>,
    pages: u32,
}

impl PageStore {
    /// The pages files among `names` (in shipping order) inside `dir`.
    pub fn open(dir: &Path, names: &[String]) -> std::io::Result<PageStore> {
        let mut files = Vec::new();
        let mut pages = 0u32;
        for name in names.iter().filter(|n| is_pages_file(n)) {
            let path = dir.join(name);
            let n = (std::fs::metadata(&path)?.len() / PAGE as u64) as u32;
            files.push((path, pages, n));
            pages = pages.checked_add(n).ok_or_else(|| std::io::Error::other("more than 2^32 pages"))?;
        }
        Ok(PageStore { files, pages })
    }

    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Calls `out` with the bytes of pages `index .. index + count`, in
    /// slices of at most `buf.len()` bytes.
    pub fn copy(&self, index: u32, count: u32, buf: &mut [u8], out: &mut impl FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let end = index.checked_add(count).filter(|e| *e <= self.pages).ok_or_else(|| {
            std::io::Error::other(format!("pages {index}..+{count} are outside the base's {} pages", self.pages))
        })?;
        let mut at = index;
        while at < end {
            let slot = self.files.partition_point(|(_, first, _)| *first <= at) - 1;
            let (path, first, n) = &self.files[slot];
            let upto = end.min(first + n);
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start((at - first) as u64 * PAGE as u64))?;
            let mut left = (upto - at) as usize * PAGE;
            while left > 0 {
                let take = left.min(buf.len());
                f.read_exact(&mut buf[..take])?;
                out(&buf[..take])?;
                left -= take;
            }
            at = upto;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE]
    }

    #[test]
    fn index_numbers_pages_across_files_and_cut_slices() {
        let mut ix = PageIndex::default();
        let file1: Vec<u8> = [1u8, 2, 3].iter().flat_map(|f| page(*f)).collect();
        for part in file1.chunks(1000) {
            ix.add(part);
        }
        ix.end_file();
        let mut file2 = page(4);
        file2.extend_from_slice(&[9; 100]); // a short tail
        ix.add(&file2);
        ix.end_file();
        assert_eq!(ix.pages(), 4);
        assert_eq!(ix.lookup(&page(1)), Some(0));
        assert_eq!(ix.lookup(&page(3)), Some(2));
        assert_eq!(ix.lookup(&page(4)), Some(3));
        assert_eq!(ix.lookup(&page(5)), None);
    }

    #[test]
    fn store_copies_ranges_across_files_and_refuses_outside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pages-1.img"), [page(0), page(1)].concat()).unwrap();
        std::fs::write(dir.path().join("pagemap-1.img"), b"not pages").unwrap();
        std::fs::write(dir.path().join("pages-2.img"), [page(2), page(3), page(4)].concat()).unwrap();
        let names: Vec<String> = ["pages-1.img", "pagemap-1.img", "pages-2.img"].map(String::from).to_vec();
        let store = PageStore::open(dir.path(), &names).unwrap();
        assert_eq!(store.pages(), 5);
        let mut buf = vec![0u8; 2 * PAGE];
        let mut got = Vec::new();
        store.copy(1, 4, &mut buf, &mut |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, [page(1), page(2), page(3), page(4)].concat());
        for (i, n) in [(4, 2), (5, 1), (u32::MAX, 2)] {
            assert!(store.copy(i, n, &mut buf, &mut |_| Ok(())).is_err(), "{i}+{n}");
        }
    }
}
