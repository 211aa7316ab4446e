//! The codec end to end: archives cut into pages, encoded against a base,
//! compressed where it pays and rebuilt byte for byte, whatever the slicing.

use super::*;
use crate::frame::{decode, encode};

/// A minimal ustar archive of (name, data) members.
fn tar(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[156] = b'0';
        h[257..262].copy_from_slice(b"ustar");
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn page(fill: u8) -> Vec<u8> {
    vec![fill; PAGE]
}

fn pages(fills: &[u8]) -> Vec<u8> {
    fills.iter().flat_map(|f| page(*f)).collect()
}

/// Cuts `archive` fed in slices of `step` bytes; returns the pieces joined
/// back and the pages seen.
fn cut(archive: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
    cut_with(TarPager::criu_pages_only(), archive, step)
}

fn cut_with(mut pager: TarPager, archive: &[u8], step: usize) -> (Vec<u8>, Vec<u8>) {
    let mut joined = Vec::new();
    let mut seen = Vec::new();
    let mut on_piece = |p: Piece<'_>| match p {
        Piece::Raw(b) => joined.extend_from_slice(b),
        Piece::Page(b) => {
            assert_eq!(b.len(), PAGE);
            seen.push(b[0]);
            joined.extend_from_slice(b);
        }
    };
    for chunk in archive.chunks(step) {
        pager.feed(chunk, &mut on_piece);
    }
    pager.finish(&mut on_piece);
    (joined, seen)
}

#[test]
fn pages_of_pages_files_are_found_whatever_the_slicing() {
    let archive = tar(&[
        ("config.dump", b"{\"a\":1}".to_vec()),
        ("checkpoint/pages-1.img", pages(&[1, 2, 3])),
        ("checkpoint/pagemap-1.img", vec![9; 100]),
        ("checkpoint/pages-2.img", pages(&[4])),
        ("rootfs-diff.tar", page(7)),
    ]);
    for step in [1, 7, 511, 512, 4096, 5000, archive.len()] {
        let (joined, seen) = cut(&archive, step);
        assert_eq!(joined, archive, "step {step}: every byte comes back, in order");
        assert_eq!(seen, vec![1, 2, 3, 4], "step {step}: only pages files are paged");
    }
}

#[test]
fn by_default_every_member_is_paged_from_its_start() {
    let mut volume = pages(&[5, 6]);
    volume.extend_from_slice(&[1; 100]); // a short tail stays raw
    let archive =
        tar(&[("config.dump", b"{}".to_vec()), ("checkpoint/pages-1.img", pages(&[1])), ("volumes/data.tar", volume), ("rootfs-diff.tar", page(7))]);
    for step in [3, 512, 4096, archive.len()] {
        let (joined, seen) = cut_with(TarPager::default(), &archive, step);
        assert_eq!(joined, archive);
        assert_eq!(seen, vec![1, 5, 6, 7], "step {step}");
    }
}

#[test]
fn garbage_is_passed_through_raw() {
    let mut junk: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    junk[124] = b'z'; // an unparseable size
    let (joined, seen) = cut(&junk, 333);
    assert_eq!(joined, junk);
    assert!(seen.is_empty());
}

#[test]
fn a_huge_announced_size_is_harmless() {
    let mut archive = tar(&[("checkpoint/pages-1.img", pages(&[1]))]);
    archive[124..135].copy_from_slice(b"77777777777");
    let (joined, _) = cut(&archive, 1000);
    assert_eq!(joined, archive);
}

/// Decodes an encoder's output against `base` pages.
fn rebuild(encoded: &[u8], base: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let (rec, used) = decode::<DeltaRecord>(&encoded[at..]).unwrap().unwrap();
        at += used;
        match rec {
            DeltaRecord::Raw { len } => {
                out.extend_from_slice(&encoded[at..at + len as usize]);
                at += len as usize;
            }
            DeltaRecord::Zstd { len, raw_len } => {
                out.extend(zstd::bulk::decompress(&encoded[at..at + len as usize], raw_len as usize).unwrap());
                at += len as usize;
            }
            DeltaRecord::Pages { index, count } => {
                for i in index..index + count {
                    out.extend_from_slice(&base[i as usize]);
                }
            }
            DeltaRecord::End => break,
            DeltaRecord::Invalid => panic!("invalid"),
        }
    }
    assert_eq!(at, encoded.len());
    out
}

#[test]
fn encoder_reuses_held_pages_in_runs_and_rebuilds_exactly() {
    let base: Vec<Vec<u8>> = (10..20).map(page).collect();
    let archive = tar(&[
        ("spec.dump", vec![1; 3000]),
        // Pages 10..=13 held (a run of 4), 99 new, 15 and 16 held.
        ("checkpoint/pages-1.img", pages(&[10, 11, 12, 13, 99, 15, 16])),
    ]);
    let mut enc = DeltaEncoder::default();
    let mut lookup = |p: &[u8]| base.iter().position(|b| b == p).map(|i| i as u32);
    let mut wire = Vec::new();
    for chunk in archive.chunks(1500) {
        enc.feed(chunk, &mut lookup).unwrap();
        wire.extend(enc.take_output());
    }
    wire.extend(enc.finish().unwrap());
    assert_eq!(rebuild(&wire, &base), archive);
    assert_eq!(enc.stats.pages_reused, 6);
    assert_eq!(enc.stats.pages_sent, 1);
    assert_eq!(enc.stats.archive_bytes, archive.len() as u64);
    assert!(wire.len() < archive.len() - 5 * PAGE, "{} vs {}", wire.len(), archive.len());
    // Two runs: 0..4 and 5..7.
    let runs = count_records(&wire, |r| matches!(r, DeltaRecord::Pages { .. }));
    assert_eq!(runs, 2);
}

fn count_records(wire: &[u8], pred: impl Fn(&DeltaRecord) -> bool) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at < wire.len() {
        let (rec, used) = decode::<DeltaRecord>(&wire[at..]).unwrap().unwrap();
        at += used;
        if let DeltaRecord::Raw { len } | DeltaRecord::Zstd { len, .. } = rec {
            at += len as usize;
        }
        n += pred(&rec) as usize;
    }
    n
}

#[test]
fn a_stream_cut_mid_page_loses_nothing() {
    let archive = tar(&[("checkpoint/pages-1.img", pages(&[1, 2]))]);
    for cut_at in [100, 512, 700, 512 + 4096 + 10, archive.len() - 1] {
        let part = &archive[..cut_at];
        let mut enc = DeltaEncoder::default();
        enc.feed(part, &mut |_| None).unwrap();
        let mut wire = enc.take_output();
        wire.extend(enc.finish().unwrap());
        assert_eq!(rebuild(&wire, &[]), part, "cut at {cut_at}");
    }
}

#[test]
fn raw_records_never_exceed_the_limit() {
    let big = vec![5u8; 3 * MAX_RAW as usize + 17];
    let archive = tar(&[("rootfs-diff.tar", big)]);
    let mut enc = DeltaEncoder::default();
    enc.feed(&archive, &mut |_| None).unwrap();
    let mut wire = enc.take_output();
    wire.extend(enc.finish().unwrap());
    assert_eq!(rebuild(&wire, &[]), archive);
}

fn decode_all(wire: &[u8], step: usize, base: &[Vec<u8>]) -> Result<Vec<u8>, DeltaError> {
    let mut dec = DeltaDecoder::default();
    let mut out = Vec::new();
    for chunk in wire.chunks(step) {
        dec.feed(chunk, &mut |d| {
            match d {
                Decoded::Raw(b) => out.extend_from_slice(b),
                Decoded::Pages { index, count } => {
                    for i in index..index.checked_add(count).ok_or("overflow")? {
                        out.extend_from_slice(base.get(i as usize).ok_or_else(|| format!("no page {i}"))?);
                    }
                }
            }
            Ok(())
        })?;
    }
    dec.finish()?;
    Ok(out)
}

#[test]
fn decoder_rebuilds_whatever_the_slicing() {
    let base: Vec<Vec<u8>> = (0..8).map(page).collect();
    let archive = tar(&[("checkpoint/pages-3.img", pages(&[0, 1, 2, 77, 5, 6]))]);
    let mut enc = DeltaEncoder::default();
    enc.feed(&archive, &mut |p: &[u8]| base.iter().position(|b| b == p).map(|i| i as u32)).unwrap();
    let mut wire = enc.take_output();
    wire.extend(enc.finish().unwrap());
    for step in [1, 3, 4, 5, 100, 4096, wire.len()] {
        assert_eq!(decode_all(&wire, step, &base).unwrap(), archive, "step {step}");
    }
}

#[test]
fn decoder_refuses_hostile_streams() {
    let rec = |r: &DeltaRecord| encode(r).unwrap();
    // No End.
    assert!(matches!(decode_all(&rec(&DeltaRecord::Pages { index: 0, count: 1 }), 7, &[page(1)]), Err(DeltaError::Unfinished)));
    // Bytes after End.
    let mut w = rec(&DeltaRecord::End);
    w.push(0);
    assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::AfterEnd(1))));
    // A raw record above the limit.
    let w = rec(&DeltaRecord::Raw { len: MAX_RAW + 1 });
    assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::RawTooLarge(_))));
    // A page the base does not have: the sink's error comes back.
    let mut w = rec(&DeltaRecord::Pages { index: 5, count: 1 });
    w.extend(rec(&DeltaRecord::End));
    assert!(matches!(decode_all(&w, 100, &[page(1)]), Err(DeltaError::Sink(m)) if m.contains("no page 5")));
    // A huge frame length and the zero variant.
    assert!(matches!(decode_all(&[0xff, 0xff, 0xff, 0xff, 0], 100, &[]), Err(DeltaError::Frame(_))));
    assert!(matches!(decode_all(&[0, 0, 0, 1, 0], 100, &[]), Err(DeltaError::Frame(_))));
    // Garbage of every length never panics.
    for n in 0..64u8 {
        let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
        let _ = decode_all(&junk, 3, &[page(0)]);
    }
}

#[test]
fn compression_is_used_where_it_pays_and_backs_off_where_not() {
    // 3 MiB of text-like bytes, then 6 MiB of noise, then text again.
    let text: Vec<u8> = b"the quick brown fox ".iter().cycle().take(3 << 20).copied().collect();
    let mut seed = 7u64;
    let noise: Vec<u8> = (0..6 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let more: Vec<u8> = b"jumps over the lazy dog ".iter().cycle().take(12 << 20).copied().collect();
    let archive = tar(&[("a.txt", text), ("noise", noise), ("b.txt", more)]);
    let mut enc = DeltaEncoder::default().compress(1);
    let mut wire = Vec::new();
    for chunk in archive.chunks(100_000) {
        enc.feed(chunk, &mut |_| None).unwrap();
        wire.extend(enc.take_output());
    }
    wire.extend(enc.finish().unwrap());
    for step in [7, 4096, 1 << 20] {
        assert_eq!(decode_all(&wire, step, &[]).unwrap(), archive, "step {step}");
    }
    let s = enc.stats;
    assert!(s.zstd_in >= (3 + 4) << 20, "both texts compressed: {s:?}");
    assert!(s.zstd_out * 20 < s.zstd_in, "{s:?}");
    assert!(s.raw_bytes >= 5 << 20, "the noise went raw: {s:?}");
    assert!(wire.len() < archive.len() * 3 / 4);
}

#[test]
fn segments_packed_elsewhere_make_the_same_stream() {
    // Runs mixed with page references, packed by the caller (as the
    // agent does on several threads) or by the encoder itself.
    let base = pages(&[1, 2, 3]);
    let text: Vec<u8> = b"abcdefgh".iter().cycle().take(2 << 20).copied().collect();
    let archive = tar(&[("checkpoint/pages-1.img", [page(9), page(1), page(2), page(8), page(3)].concat()), ("t", text)]);
    let held = |p: &[u8]| base.chunks(PAGE).position(|b| b == p).map(|i| i as u32);
    let mut inline = DeltaEncoder::default().compress(1);
    let mut outside = DeltaEncoder::default();
    let mut packer = Packer::new(1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut stats = DeltaStats::default();
    let mut pack = |segs: Vec<Segment>, out: &mut Vec<u8>| {
        for seg in segs {
            match seg {
                Segment::Ready(r) => out.extend(r),
                Segment::Run(run) => {
                    let z = if packer.want() { compress_run(&run, 1) } else { None };
                    packer.tried(z.is_some());
                    pack_run(&run, z.as_deref(), out, &mut stats).unwrap();
                }
            }
        }
    };
    for chunk in archive.chunks(3000) {
        inline.feed(chunk, &mut |p| held(p)).unwrap();
        a.extend(inline.take_output());
        outside.feed(chunk, &mut |p| held(p)).unwrap();
        pack(outside.take_segments(), &mut b);
    }
    a.extend(inline.finish().unwrap());
    pack(outside.finish_segments().unwrap(), &mut b);
    assert_eq!(a, b);
    assert_eq!((stats.zstd_in, stats.raw_bytes), (inline.stats.zstd_in, inline.stats.raw_bytes));
    let base_pages: Vec<Vec<u8>> = base.chunks(PAGE).map(<[u8]>::to_vec).collect();
    assert_eq!(decode_all(&b, 1000, &base_pages).unwrap(), archive);
}

#[test]
fn hostile_compressed_records_are_refused() {
    let rec = |r: &DeltaRecord| encode(r).unwrap();
    // Announces more than MAX_RAW once decompressed.
    let w = rec(&DeltaRecord::Zstd { len: 10, raw_len: MAX_RAW + 1 });
    assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::RawTooLarge(_))));
    // A bomb: tiny input that would inflate past what it announces.
    let bomb = zstd::bulk::compress(&vec![0u8; MAX_RAW as usize], 1).unwrap();
    let mut w = rec(&DeltaRecord::Zstd { len: bomb.len() as u32, raw_len: 4096 });
    w.extend_from_slice(&bomb);
    w.extend(rec(&DeltaRecord::End));
    assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::BadZstd(4096))));
    // Garbage inside a compressed record.
    let mut w = rec(&DeltaRecord::Zstd { len: 5, raw_len: 100 });
    w.extend_from_slice(&[1, 2, 3, 4, 5]);
    assert!(matches!(decode_all(&w, 100, &[]), Err(DeltaError::BadZstd(100))));
}

/// The archive in `wire`, records without a base.
fn decode_unbased(wire: &[u8]) -> Vec<u8> {
    let mut dec = DeltaDecoder::default();
    let mut out = Vec::new();
    dec.feed(wire, &mut |d| match d {
        Decoded::Raw(b) => {
            out.extend_from_slice(b);
            Ok(())
        }
        Decoded::Pages { .. } => Err("no base here".into()),
    })
    .unwrap();
    dec.finish().unwrap();
    out
}

#[test]
fn a_batch_compresses_on_several_threads_and_keeps_the_order() {
    // Compressible runs and noise, interleaved, packed three at a time.
    let mut seed = 11u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let runs: Vec<Vec<u8>> =
        (0..12).map(|i| if i % 3 == 1 { noise(300_000) } else { format!("run {i} ").bytes().cycle().take(500_000).collect() }).collect();
    let mut batch = Compressor::new(Some(Packer::new(1)), 3);
    let mut stats = DeltaStats::default();
    let mut wire = Vec::new();
    for r in &runs {
        batch.add(vec![Segment::Run(r.clone())]);
        if let Some(out) = batch.take_if_full(&mut stats).unwrap() {
            wire.extend(out);
        }
    }
    batch.add(vec![Segment::Ready(encode(&DeltaRecord::End).unwrap())]);
    wire.extend(batch.take(&mut stats).unwrap());
    assert_eq!(decode_unbased(&wire), runs.concat());
    assert!(stats.zstd_in >= 6 * 500_000, "{stats:?}");
    assert!(stats.raw_bytes >= 300_000, "noise goes raw: {stats:?}");
}

/// Feeds `wire` to a decoder with `limits`; returns the bytes it would
/// produce (pages counted, not copied).
fn produced(wire: &[u8], limits: DeltaLimits) -> Result<u64, DeltaError> {
    let mut dec = DeltaDecoder::with_limits(limits);
    let mut out = 0u64;
    dec.feed(wire, &mut |d| {
        out += match d {
            Decoded::Raw(b) => b.len() as u64,
            Decoded::Pages { count, .. } => u64::from(count) * PAGE as u64,
        };
        Ok(())
    })?;
    dec.finish()?;
    Ok(out)
}

#[test]
fn an_eleven_byte_record_can_no_longer_replay_the_whole_base() {
    let rec = |r: &DeltaRecord| encode(r).unwrap();
    let all = rec(&DeltaRecord::Pages { index: 0, count: u32::MAX });
    assert_eq!(all.len(), 11);
    // Even with the default limits: 16 TiB of pages is over the output cap.
    let mut w = all.clone();
    w.extend(rec(&DeltaRecord::End));
    assert!(matches!(produced(&w, DeltaLimits::default()), Err(DeltaError::OutputTooLarge { limit: MAX_ARCHIVE_BYTES })));
    // Against a base of 1000 pages: outside it.
    let limits = DeltaLimits::new(1000, 1 << 40);
    assert!(matches!(produced(&w, limits), Err(DeltaError::PagesOutsideBase { index: 0, count: u32::MAX, base_pages: 1000 })));
    // The whole base once is fine; a second replay, a few bytes later, is not.
    let once = rec(&DeltaRecord::Pages { index: 0, count: 1000 });
    let mut w = once.clone();
    w.extend(rec(&DeltaRecord::End));
    assert_eq!(produced(&w, limits).unwrap(), 1000 * PAGE as u64);
    let mut w = once.repeat(2);
    w.extend(rec(&DeltaRecord::End));
    assert!(matches!(produced(&w, limits), Err(DeltaError::TooManyPageRefs { pages: 2000, .. })));
    // Repeated single pages (zero pages, say) pay for themselves.
    assert_eq!(rec(&DeltaRecord::Pages { index: 7, count: 1 }).len() as u64, PAGE_RECORD_BYTES);
    let mut w = rec(&DeltaRecord::Pages { index: 7, count: 1 }).repeat(5000);
    w.extend(rec(&DeltaRecord::End));
    assert_eq!(produced(&w, limits).unwrap(), 5000 * PAGE as u64);
    // And the caller's cap on the output holds for pages and raw runs alike.
    let mut w = once.clone();
    w.extend(rec(&DeltaRecord::End));
    assert!(matches!(produced(&w, DeltaLimits::new(1000, 1000 * PAGE as u64 - 1)), Err(DeltaError::OutputTooLarge { .. })));
    let mut w = rec(&DeltaRecord::Raw { len: 10 });
    w.extend_from_slice(&[1; 10]);
    w.extend(rec(&DeltaRecord::Zstd { len: 9, raw_len: 10 }));
    assert!(matches!(produced(&w, DeltaLimits::new(0, 19)), Err(DeltaError::OutputTooLarge { limit: 19 })));
}

#[test]
fn references_need_a_base_and_at_least_one_page() {
    let rec = |r: &DeltaRecord| encode(r).unwrap();
    let w = rec(&DeltaRecord::Pages { index: 0, count: 1 });
    assert!(matches!(produced(&w, DeltaLimits::new(0, 1 << 30)), Err(DeltaError::NoBase)));
    let w = rec(&DeltaRecord::Pages { index: 3, count: 0 });
    assert!(matches!(produced(&w, DeltaLimits::new(10, 1 << 30)), Err(DeltaError::EmptyPages)));
    let w = rec(&DeltaRecord::Pages { index: u32::MAX, count: 1 });
    assert!(matches!(produced(&w, DeltaLimits::new(10, 1 << 30)), Err(DeltaError::PagesOutsideBase { .. })));
}

#[test]
fn real_streams_pass_limits_set_to_their_size() {
    let base: Vec<Vec<u8>> = (0..8).map(page).collect();
    let archive = tar(&[("checkpoint/pages-3.img", pages(&[0, 1, 2, 77, 5, 6, 0, 0, 0, 1, 2]))]);
    let mut enc = DeltaEncoder::default();
    enc.feed(&archive, &mut |p: &[u8]| base.iter().position(|b| b == p).map(|i| i as u32)).unwrap();
    let mut wire = enc.take_output();
    wire.extend(enc.finish().unwrap());
    assert_eq!(produced(&wire, DeltaLimits::new(8, archive.len() as u64)).unwrap(), archive.len() as u64);
    assert!(matches!(produced(&wire, DeltaLimits::new(8, archive.len() as u64 - 1)), Err(DeltaError::OutputTooLarge { .. })));
}
