//! Round trips, generated: every wire message through the framing, delta
//! records, file sets, and the tar walker and pager on generated archives.
//! Few cases each, so `cargo test -p tern-proto` stays fast.

mod strategies;

use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::BTreeMap;
use tern_proto::delta::{Decoded, DeltaDecoder, DeltaEncoder, DeltaLimits, Piece, TarPager, PAGE};
use tern_proto::fileset::{FileEntry, FileEvent, FileSetDecoder, FileSetLimits};
use tern_proto::frame::{decode, encode, FrameCollector, FrameError, WireMessage};
use tern_proto::tarwalk::{Step, TarWalker, BLOCK};

/// `msg` framed, decoded whole and in slices of `step`: itself again, or
/// refused as `Invalid` when it is the reserved variant.
fn frame_round_trip<M: WireMessage + PartialEq + std::fmt::Debug>(msg: M, step: usize) -> Result<(), TestCaseError> {
    let wire = encode(&msg).unwrap();
    let whole = decode::<M>(&wire);
    if msg.is_invalid() {
        prop_assert!(matches!(whole, Err(FrameError::Invalid(_))), "{whole:?}");
        return Ok(());
    }
    let (back, used) = whole.unwrap().expect("a whole frame");
    prop_assert_eq!(&back, &msg);
    prop_assert_eq!(used, wire.len());
    // Cut short anywhere: not yet a frame.
    for cut in [0, 3, wire.len() / 2, wire.len() - 1] {
        prop_assert!(matches!(decode::<M>(&wire[..cut]), Ok(None)));
    }
    let mut collector = FrameCollector::new(tern_proto::MAX_FRAME_LEN);
    let mut got = None;
    for mut chunk in wire.chunks(step) {
        if let Some(m) = collector.push::<M>(&mut chunk).unwrap() {
            prop_assert!(chunk.is_empty());
            got = Some(m);
        }
    }
    prop_assert_eq!(got, Some(msg));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(m in strategies::request(), step in 1usize..64) { frame_round_trip(m, step)?; }
    #[test]
    fn responses_round_trip(m in strategies::response(), step in 1usize..64) { frame_round_trip(m, step)?; }
    #[test]
    fn source_messages_round_trip(m in strategies::source_msg(), step in 1usize..64) { frame_round_trip(m, step)?; }
    #[test]
    fn target_messages_round_trip(m in strategies::target_msg(), step in 1usize..64) { frame_round_trip(m, step)?; }
    #[test]
    fn migrate_events_round_trip(m in strategies::migrate_event(), step in 1usize..64) { frame_round_trip(m, step)?; }
    #[test]
    fn coordinator_signals_round_trip(m in strategies::coordinator_signal(), step in 1usize..64) { frame_round_trip(m, step)?; }
    #[test]
    fn data_headers_round_trip(m in strategies::data_header(), step in 1usize..64) { frame_round_trip(m, step)?; }
    #[test]
    fn hello_replies_round_trip(m in strategies::hello_reply(), step in 1usize..64) { frame_round_trip(m, step)?; }
}

/// A member of a generated archive: name, typeflag, data.
type Member = (String, u8, Vec<u8>);

/// Data made of pages from a few fills (some found in the base), and a tail.
fn member_data() -> impl Strategy<Value = Vec<u8>> {
    (vec(0u8..6, 0..5), vec(any::<u8>(), 0..700)).prop_map(|(fills, tail)| {
        let mut d: Vec<u8> = fills.iter().flat_map(|f| vec![*f; PAGE]).collect();
        d.extend(tail);
        d
    })
}

fn member() -> impl Strategy<Value = Member> {
    let name = prop_oneof!["[a-z]{1,8}", "checkpoint/pages-[0-9]{1,2}\\.img", "[a-z]{90,99}"];
    let typeflag = prop_oneof![4 => Just(b'0'), 1 => Just(0u8), 1 => Just(b'5'), 1 => Just(b'x'), 1 => Just(b'L')];
    (name, typeflag, member_data()).prop_map(|(n, t, d)| if t == b'5' { (n, t, Vec::new()) } else { (n, t, d) })
}

/// A ustar archive of `members`, closed by two zero blocks; octal sizes
/// for most, base-256 for members whose name starts with `b`.
fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typeflag, data) in members {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        if name.starts_with('b') {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&(data.len() as u64).to_be_bytes());
        } else {
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        }
        h[156] = *typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.extend_from_slice(&[0; 2 * BLOCK]);
    out
}

/// The base's pages: fills 0, 1 and 2.
fn base() -> Vec<Vec<u8>> {
    (0..3u8).map(|f| vec![f; PAGE]).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn the_tar_walker_gives_back_every_member(members in vec(member(), 0..5), step in 1usize..3000) {
        let archive = tar(&members);
        let mut w = TarWalker::default();
        let mut headers: Vec<(Vec<u8>, u64)> = vec![];
        let (mut datas, mut joined): (Vec<Vec<u8>>, Vec<u8>) = (vec![], vec![]);
        for mut chunk in archive.chunks(step) {
            while let Some(s) = w.next(&mut chunk) {
                match s {
                    Step::Header { header, size, .. } => {
                        joined.extend_from_slice(header.as_bytes());
                        headers.push((header.path().into_owned(), size));
                        datas.push(Vec::new());
                    }
                    Step::Data { bytes, .. } => {
                        joined.extend_from_slice(bytes);
                        datas.last_mut().unwrap().extend_from_slice(bytes);
                    }
                    Step::Pad(b) => joined.extend_from_slice(b),
                    Step::Zeros => joined.extend_from_slice(&[0; BLOCK]),
                    Step::Unparsed(_) | Step::Opaque(_) => prop_assert!(false, "a generated archive parses"),
                }
            }
        }
        prop_assert!(w.at_boundary());
        prop_assert_eq!(joined, archive.clone());
        let want: Vec<(Vec<u8>, u64)> = members.iter().map(|(n, _, d)| (n.as_bytes().to_vec(), d.len() as u64)).collect();
        prop_assert_eq!(headers, want);
        prop_assert_eq!(datas, members.iter().map(|m| m.2.clone()).collect::<Vec<_>>());

        // The pager: every byte back once, whole pages only.
        for mut pager in [TarPager::default(), TarPager::criu_pages_only()] {
            let mut joined = Vec::new();
            let mut emit = |p: Piece<'_>| match p {
                Piece::Raw(b) => joined.extend_from_slice(b),
                Piece::Page(b) => { assert_eq!(b.len(), PAGE); joined.extend_from_slice(b) }
            };
            for chunk in archive.chunks(step) {
                pager.feed(chunk, &mut emit);
            }
            pager.finish(&mut emit);
            prop_assert_eq!(&joined, &archive);
        }
    }

    #[test]
    fn delta_streams_rebuild_the_archive(members in vec(member(), 0..4), step in 1usize..5000, level in prop_oneof![Just(None), Just(Some(1))]) {
        let archive = tar(&members);
        let base = base();
        let mut enc = match level { Some(l) => DeltaEncoder::default().compress(l), None => DeltaEncoder::default() };
        let mut wire = Vec::new();
        for chunk in archive.chunks(step) {
            enc.feed(chunk, &mut |p: &[u8]| base.iter().position(|b| b == p).map(|i| i as u32)).unwrap();
            wire.extend(enc.take_output());
        }
        wire.extend(enc.finish().unwrap());
        // Limits set to exactly what the stream needs.
        let mut dec = DeltaDecoder::with_limits(DeltaLimits::new(base.len() as u32, archive.len() as u64));
        let mut out = Vec::new();
        for chunk in wire.chunks(step) {
            dec.feed(chunk, &mut |d| {
                match d {
                    Decoded::Raw(b) => out.extend_from_slice(b),
                    Decoded::Pages { index, count } => (index..index + count).for_each(|i| out.extend_from_slice(&base[i as usize])),
                }
                Ok(())
            }).unwrap();
        }
        dec.finish().unwrap();
        prop_assert_eq!(out, archive);
    }

    #[test]
    fn file_sets_round_trip(files in proptest::collection::btree_map("[a-z0-9_.-]{1,30}", vec(any::<u8>(), 0..3000), 0..6), step in 1usize..4000) {
        let files: BTreeMap<String, Vec<u8>> = files.into_iter().filter(|(n, _)| n != "." && n != "..").collect();
        let mut wire = Vec::new();
        for (name, data) in &files {
            wire.extend(encode(&FileEntry::File { name: name.clone(), len: data.len() as u64 }).unwrap());
            wire.extend_from_slice(data);
        }
        wire.extend(encode(&FileEntry::End).unwrap());
        let total: u64 = files.values().map(|d| d.len() as u64).sum();
        let mut dec = FileSetDecoder::with_limits(FileSetLimits { max_files: files.len(), ..FileSetLimits::expecting(total) });
        let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut current = None;
        for chunk in wire.chunks(step) {
            dec.feed(chunk, &mut |e| {
                match e {
                    FileEvent::Start { name, .. } => {
                        current = Some(name.to_string());
                        got.insert(name.to_string(), Vec::new());
                    }
                    FileEvent::Data(b) => got.get_mut(current.as_ref().unwrap()).unwrap().extend_from_slice(b),
                    FileEvent::EndFile => current = None,
                }
                Ok(())
            }).unwrap();
        }
        dec.finish().unwrap();
        prop_assert_eq!(got, files);
    }
}
