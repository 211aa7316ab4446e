//! Writes the fuzzers' seed corpora (fuzz/corpus/<target>/) from real
//! encodings: `cargo run -p tern-proto --example fuzz_seeds -- fuzz/corpus`.
//! Each seed starts with the byte (two for criu_image) its target reads
//! first to choose a message type, a slicing or a cut (see fuzz/fuzz_targets).
//! Deterministic: the same files every run.

#[path = "../tests/strategies/mod.rs"]
mod strategies;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use std::path::Path;
use tern_proto::delta::{DeltaEncoder, PAGE};
use tern_proto::fileset::FileEntry;
use tern_proto::frame::{encode, WireMessage};

/// `n` samples of `s`, the same every run.
fn samples<S: Strategy>(s: S, n: usize) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..n).map(|_| s.new_tree(&mut runner).expect("a value").current()).collect()
}

fn frames<M: WireMessage>(out: &mut Vec<Vec<u8>>, sel: u8, msgs: Vec<M>) {
    for (i, m) in msgs.iter().enumerate() {
        // The selector's high bits choose the slicing.
        let mut seed = vec![sel | ((i as u8 * 5) << 3)];
        seed.extend(encode(m).expect("a sample encodes"));
        out.push(seed);
    }
}

/// A ustar archive of (name, typeflag, data).
fn tar(members: &[(&str, u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typeflag, data) in members {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[156] = *typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum, as tar writes it (the walker does not check it).
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

/// Pages of the fuzz base (page i filled with byte i, 4 pages) and others.
fn pages(fills: &[u8]) -> Vec<u8> {
    fills.iter().flat_map(|f| vec![*f; PAGE]).collect()
}

fn archives() -> Vec<Vec<u8>> {
    let text: Vec<u8> = b"inventory ".iter().copied().cycle().take(700).collect();
    vec![
        tar(&[("a", b'0', b"hello".to_vec())]),
        tar(&[("checkpoint/pages-1.img", b'0', pages(&[0, 1, 9, 3])), ("checkpoint/inventory.img", b'0', text.clone())]),
        tar(&[("././@LongLink", b'L', b"checkpoint/a-long-name".to_vec()), ("checkpoint/a-long-n", b'0', pages(&[2]))]),
        tar(&[("pax", b'x', b"30 path=checkpoint/pages-2.img\n".to_vec()), ("x", b'0', pages(&[1, 1])), ("dir", b'5', vec![])]),
        tar(&[("link", b'2', vec![]), ("rootfs-diff.tar", b'0', tar(&[("etc/hosts", b'0', text)]))]),
    ]
}

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    for old in std::fs::read_dir(&dir).expect("corpus directory") {
        std::fs::remove_file(old.expect("entry").path()).expect("old seed removed");
    }
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).expect("seed written");
    }
    println!("{target}: {} seeds, {} bytes", seeds.len(), seeds.iter().map(Vec::len).sum::<usize>());
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into());
    let dir = Path::new(&dir);

    let mut f = Vec::new();
    frames(&mut f, 0, samples(strategies::request(), 6));
    frames(&mut f, 1, samples(strategies::response(), 6));
    frames(&mut f, 2, samples(strategies::source_msg(), 3));
    frames(&mut f, 3, samples(strategies::target_msg(), 4));
    frames(&mut f, 4, samples(strategies::migrate_event(), 3));
    frames(&mut f, 5, samples(strategies::coordinator_signal(), 1));
    frames(&mut f, 6, samples(strategies::data_header(), 3));
    frames(&mut f, 7, samples(strategies::hello_reply(), 2));
    write(dir, "frame", &f);

    // Delta: the archives encoded against the fuzz target's base, plain
    // and compressed; selector 0x80 is the stream without a base.
    let base: Vec<Vec<u8>> = (0..4u8).map(|f| vec![f; PAGE]).collect();
    let mut d = Vec::new();
    for (i, a) in archives().iter().enumerate() {
        for level in [None, Some(1)] {
            let mut enc = match level {
                Some(l) => DeltaEncoder::default().compress(l),
                None => DeltaEncoder::default(),
            };
            let mut seed = vec![(i * 37 % 128) as u8];
            enc.feed(a, &mut |p: &[u8]| base.iter().position(|b| b == p).map(|i| i as u32)).expect("encodes");
            seed.extend(enc.take_output());
            seed.extend(enc.finish().expect("encodes"));
            d.push(seed);
        }
    }
    let mut nobase = DeltaEncoder::default();
    let mut seed = vec![0x80 | 9];
    nobase.feed(&archives()[0], &mut |_| None).expect("encodes");
    seed.extend(nobase.take_output());
    seed.extend(nobase.finish().expect("encodes"));
    d.push(seed);
    write(dir, "delta", &d);

    // File sets.
    let set = |files: &[(&str, &[u8])], sel: u8| {
        let mut s = vec![sel];
        for (name, data) in files {
            s.extend(encode(&FileEntry::File { name: name.to_string(), len: data.len() as u64 }).expect("encodes"));
            s.extend_from_slice(data);
        }
        s.extend(encode(&FileEntry::End).expect("encodes"));
        s
    };
    let fs = vec![
        set(&[], 0),
        set(&[("pages-1.img", &[7; 300]), ("inventory.img", b"inv"), ("empty.img", b"")], 3),
        set(&[("a", b"1"), ("b", b"22"), ("c", b"333"), ("d", b"4444")], 17),
        set(&[(&"n".repeat(255), b"long name")], 63),
    ];
    write(dir, "fileset", &fs);

    // Tar: the archives, sliced two ways, paging everything or CRIU's pages only.
    let t: Vec<Vec<u8>> = archives().into_iter().enumerate().map(|(i, a)| [vec![(i as u8 * 41) | ((i as u8 & 1) << 7)], a].concat()).collect();
    write(dir, "tar", &t);

    // CRIU images: the real dumps in tests/fixtures, files.img then one of
    // its tcp-stream images, cut where they meet.
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/criu-tcp");
    let mut c = Vec::new();
    for (files, stream) in [("server/files.img", "server/tcp-stream-9372.img"), ("client/files.img", "client/tcp-stream-937f.img")] {
        let files = std::fs::read(fx.join(files)).expect("fixture");
        let stream = std::fs::read(fx.join(stream)).expect("fixture");
        c.push([(files.len() as u16).to_le_bytes().to_vec(), files, stream].concat());
    }
    write(dir, "criu_image", &c);
}
