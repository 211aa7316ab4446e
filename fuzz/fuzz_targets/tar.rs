//! The tar walker and the pager: never a panic, and every byte comes back
//! exactly once, in order, whatever the slicing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::delta::{Piece, TarPager, PAGE};
use tern_proto::tarwalk::{Step, TarWalker, BLOCK};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let step = usize::from(sel & 0x7f) * 7 + 1;

    let mut walker = TarWalker::default();
    let mut joined = Vec::with_capacity(rest.len());
    for mut chunk in rest.chunks(step) {
        while let Some(s) = walker.next(&mut chunk) {
            match s {
                Step::Header { header, size, .. } => {
                    assert_eq!(header.size(), Some(size));
                    header.padded_size().expect("a walked size pads");
                    let _ = (header.path(), header.mode(), header.link_name(), header.is_extended());
                    joined.extend_from_slice(header.as_bytes());
                }
                Step::Zeros => joined.extend_from_slice(&[0; BLOCK]),
                Step::Unparsed(h) => {
                    assert!(h.size().is_none());
                    joined.extend_from_slice(h.as_bytes());
                }
                Step::Data { bytes, .. } | Step::Pad(bytes) | Step::Opaque(bytes) => joined.extend_from_slice(bytes),
            }
        }
    }
    joined.extend_from_slice(walker.pending());
    assert_eq!(joined, rest, "the walker lost or repeated bytes");

    let mut pager = if sel & 0x80 == 0 { TarPager::default() } else { TarPager::criu_pages_only() };
    let mut joined = Vec::with_capacity(rest.len());
    let mut emit = |p: Piece<'_>| match p {
        Piece::Raw(b) => joined.extend_from_slice(b),
        Piece::Page(b) => {
            assert_eq!(b.len(), PAGE);
            joined.extend_from_slice(b)
        }
    };
    for chunk in rest.chunks(step) {
        pager.feed(chunk, &mut emit);
    }
    pager.finish(&mut emit);
    assert_eq!(joined, rest, "the pager lost or repeated bytes");
});
