//! The CRIU image decoder on real dumps (tests/fixtures/criu-tcp, see its
//! README) and on hand-made, truncated, corrupted and hostile images.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tern_proto::criu_image::*;

const SERVER_FILES: &[u8] = include_bytes!("fixtures/criu-tcp/server/files.img");
const SERVER_9372: &[u8] = include_bytes!("fixtures/criu-tcp/server/tcp-stream-9372.img");
const SERVER_9702: &[u8] = include_bytes!("fixtures/criu-tcp/server/tcp-stream-9702.img");
const CLIENT_FILES: &[u8] = include_bytes!("fixtures/criu-tcp/client/files.img");
const CLIENT_937F: &[u8] = include_bytes!("fixtures/criu-tcp/client/tcp-stream-937f.img");
const CLIENT_9380: &[u8] = include_bytes!("fixtures/criu-tcp/client/tcp-stream-9380.img");

fn server_stream(ino: u32) -> Option<Vec<u8>> {
    match tcp_stream_file_name(ino).as_str() {
        "tcp-stream-9372.img" => Some(SERVER_9372.to_vec()),
        "tcp-stream-9702.img" => Some(SERVER_9702.to_vec()),
        _ => None,
    }
}

fn client_stream(ino: u32) -> Option<Vec<u8>> {
    match tcp_stream_file_name(ino).as_str() {
        "tcp-stream-937f.img" => Some(CLIENT_937F.to_vec()),
        "tcp-stream-9380.img" => Some(CLIENT_9380.to_vec()),
        _ => None,
    }
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(a), port))
}

fn v6(s: &str, port: u16) -> SocketAddr {
    SocketAddr::from((s.parse::<Ipv6Addr>().unwrap(), port))
}

// ---------------------------------------------------------------------------
// The real dumps. The fixtures come from x86_64: the address words are in
// that host's (little-endian) byte order, as CRIU writes them.

#[cfg(target_endian = "little")]
#[test]
fn server_dump_lists_every_inet_socket() {
    let s = inet_sockets(SERVER_FILES).unwrap();
    let brief: Vec<_> = s.iter().map(|s| (s.id, s.ino, s.family, s.sock_type, s.protocol, s.state, s.local, s.remote)).collect();
    let any4 = v4([0, 0, 0, 0], 0);
    let any6 = v6("::", 0);
    assert_eq!(
        brief,
        vec![
            (11, 37743, AF_INET, SOCK_STREAM, IPPROTO_TCP, 10, v4([0, 0, 0, 0], 7000), any4), // LISTEN
            (12, 37744, AF_INET6, SOCK_STREAM, IPPROTO_TCP, 10, v6("::", 7001), any6),        // LISTEN
            (13, 37745, AF_INET, 2, 17, 7, v4([0, 0, 0, 0], 7002), any4),                     // UDP, CLOSE
            (14, 37746, AF_INET, SOCK_STREAM, IPPROTO_TCP, TCP_ESTABLISHED, v4([203, 0, 113, 1], 7000), v4([203, 0, 113, 2], 42938)),
            (15, 38658, AF_INET6, SOCK_STREAM, IPPROTO_TCP, TCP_ESTABLISHED, v6("2001:db8::1", 7001), v6("2001:db8::2", 41196)),
        ]
    );
    assert_eq!(s.iter().filter(|s| s.is_established_tcp()).count(), 2);
}

#[cfg(target_endian = "little")]
#[test]
fn server_dump_established_connections_exact() {
    let c = established_connections(SERVER_FILES, server_stream).unwrap();
    assert_eq!(
        c,
        vec![
            TcpImage {
                ino: 0x9372,
                local: v4([203, 0, 113, 1], 7000),
                remote: v4([203, 0, 113, 2], 42938),
                inq_seq: 1504121986,
                outq_seq: 70720931,
                inq_len: 20,
                outq_len: 33,
                unsq_len: Some(0),
            },
            TcpImage {
                ino: 0x9702,
                local: v6("2001:db8::1", 7001),
                remote: v6("2001:db8::2", 41196),
                inq_seq: 3052898237,
                outq_seq: 1010715291,
                inq_len: 22,
                outq_len: 44,
                unsq_len: Some(0),
            },
        ]
    );
    // All 33 and 44 queued bytes had been sent (unsq_len 0), none acknowledged.
    assert_eq!(c[0].snd_una(), 70720898);
    assert_eq!(c[0].snd_nxt(), Some(70720931));
}

#[test]
fn server_tcp_stream_every_field() {
    let s = parse_tcp_stream(SERVER_9372).unwrap();
    assert_eq!(
        s,
        TcpStream {
            inq_len: 20,
            inq_seq: 1504121986,
            outq_len: 33,
            outq_seq: 70720931,
            unsq_len: Some(0),
            opt_mask: Some(0x7),
            snd_wscale: Some(10),
            mss_clamp: Some(1460),
            rcv_wscale: Some(10),
            timestamp: Some(1703395694),
            snd_wl1: Some(1504121966),
            snd_wnd: Some(64512),
            max_window: Some(64512),
            rcv_wnd: Some(65536),
            rcv_wup: Some(1504121986),
        }
    );
    assert_eq!(s.rcv_nxt(), 1504121986);
    // The queues follow the entry: 8 bytes of magics, 4 of size, 58 of entry.
    assert_eq!(SERVER_9372.len(), 8 + 4 + 58 + 20 + 33);
    assert!(SERVER_9372.ends_with(&[b'C'; 20].iter().chain(&[b'S'; 33]).copied().collect::<Vec<_>>()));
    // The head alone is enough.
    assert_eq!(parse_tcp_stream(&SERVER_9372[..70]).unwrap(), s);
}

/// The client's dump was made after the server's, from the other namespace:
/// its ends mirror the server's and the two sides' sequences agree.
#[cfg(target_endian = "little")]
#[test]
fn client_dump_mirrors_the_server() {
    let server = established_connections(SERVER_FILES, server_stream).unwrap();
    let client = established_connections(CLIENT_FILES, client_stream).unwrap();
    assert_eq!(client.len(), 2);
    for (s, c) in server.iter().zip(&client) {
        assert_eq!((c.local, c.remote), (s.remote, s.local));
        // Everything the client sent had arrived: the server's rcv_nxt is the client's write_seq.
        assert_eq!(c.outq_seq, s.inq_seq);
        assert_eq!((c.outq_len, c.inq_len), (0, 0));
        // Nothing the server sent had arrived: the client's rcv_nxt is the server's snd_una.
        assert_eq!(c.inq_seq, s.snd_una());
    }
    assert_eq!(client[0].ino, 0x937f);
    assert_eq!(client[1].ino, 0x9380);
}

#[test]
fn stream_file_names_are_lowercase_hex() {
    assert_eq!(tcp_stream_file_name(37746), "tcp-stream-9372.img");
    assert_eq!(tcp_stream_file_name(0xABCDEF), "tcp-stream-abcdef.img");
}

#[test]
fn a_missing_stream_image_is_an_error_naming_the_socket() {
    let e = established_connections(SERVER_FILES, |ino| if ino == 0x9372 { Some(SERVER_9372.to_vec()) } else { None }).unwrap_err();
    assert!(matches!(e, ImageError::MissingStream { ino: 0x9702, .. }), "{e}");
    assert!(e.to_string().contains("tcp-stream-9702.img"), "{e}");
}

#[test]
fn a_corrupt_stream_image_is_an_error_naming_its_file() {
    let e =
        established_connections(SERVER_FILES, |ino| Some(if ino == 0x9372 { SERVER_9372[..20].to_vec() } else { SERVER_9702.to_vec() })).unwrap_err();
    match &e {
        ImageError::Stream { ino: 0x9372, source } => {
            assert!(matches!(**source, ImageError::EntryTooLong { offset: 8, len: 58, available: 8, .. }), "{source}")
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().starts_with("tcp-stream-9372.img: tcp-stream image: entry at byte 8"), "{e}");
}

// ---------------------------------------------------------------------------
// Truncation, magic, lengths

#[test]
fn every_prefix_of_files_img_is_an_error_or_fewer_sockets() {
    let full = inet_sockets(SERVER_FILES).unwrap();
    for n in 0..SERVER_FILES.len() {
        // A cut at an entry's end leaves a shorter, valid image.
        if let Ok(s) = inet_sockets(&SERVER_FILES[..n]) {
            assert!(full.starts_with(&s), "prefix {n}");
        }
    }
    assert!(matches!(inet_sockets(&[]), Err(ImageError::Truncated { offset: 0, needed: 4, available: 0, .. })));
    assert!(matches!(inet_sockets(&SERVER_FILES[..6]), Err(ImageError::Truncated { offset: 4, needed: 4, available: 2, .. })));
    // Two bytes of the first entry's size.
    assert!(matches!(inet_sockets(&SERVER_FILES[..10]), Err(ImageError::Truncated { offset: 8, available: 2, .. })));
    // Cut inside the first entry.
    let e = inet_sockets(&SERVER_FILES[..30]).unwrap_err();
    assert!(matches!(e, ImageError::EntryTooLong { image: "files.img", offset: 8, available: 18, .. }), "{e}");
    // The magics alone: no socket.
    assert_eq!(inet_sockets(&SERVER_FILES[..8]).unwrap(), vec![]);
}

#[test]
fn every_prefix_of_a_stream_image_short_of_its_entry_is_an_error() {
    let entry_end = 8 + 4 + 58;
    for n in 0..entry_end {
        assert!(parse_tcp_stream(&SERVER_9372[..n]).is_err(), "prefix {n}");
    }
    assert!(matches!(parse_tcp_stream(&SERVER_9372[..8]), Err(ImageError::Empty { .. })));
}

#[test]
fn bad_magics() {
    let mut b = SERVER_FILES.to_vec();
    b[4] ^= 0xff;
    let e = inet_sockets(&b).unwrap_err();
    assert!(matches!(e, ImageError::BadMagic { offset: 4, .. }), "{e}");
    assert!(e.to_string().contains("FILES_MAGIC"), "{e}");
    // A tcp-stream image is not a files image, and the other way round.
    assert!(matches!(inet_sockets(SERVER_9372), Err(ImageError::BadMagic { found: TCP_STREAM_MAGIC, .. })));
    assert!(matches!(parse_tcp_stream(SERVER_FILES), Err(ImageError::BadMagic { found: FILES_MAGIC, .. })));
    // Garbage where the common magic belongs is read as a V1 image's magic, and refused.
    assert!(matches!(inet_sockets(b"garbage!"), Err(ImageError::BadMagic { offset: 0, .. })));
}

#[test]
fn oversized_lengths_are_refused_without_allocating() {
    // An entry claiming 4 GiB.
    let mut b = image(FILES_MAGIC, &[]);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    assert!(matches!(inet_sockets(&b), Err(ImageError::EntryTooLong { len: u32::MAX, available: 16, .. })));
    // A file_entry whose isk claims more than the entry holds.
    let mut fe = Vec::new();
    field_u32(&mut fe, 1, FD_TYPE_INETSK);
    key(&mut fe, 4, 2);
    varint(&mut fe, 1 << 40);
    fe.extend_from_slice(&[0; 8]);
    let e = inet_sockets(&image(FILES_MAGIC, &[fe])).unwrap_err();
    assert!(matches!(e, ImageError::Malformed { message: "file_entry", problem: WireProblem::LengthPastEnd { field: 4, .. }, .. }), "{e}");
    // A packed address with a billion words.
    let mut isk = inet_sk(1, AF_INET6, TCP_ESTABLISHED, &[1, 2, 3, 4], 80, &[5, 6, 7, 8], 81, false);
    key(&mut isk, 11, 2);
    varint(&mut isk, 1_000_000_000);
    let e = inet_sockets(&image(INETSK_MAGIC, &[isk])).unwrap_err();
    assert!(matches!(e, ImageError::Malformed { problem: WireProblem::LengthPastEnd { field: 11, .. }, .. }), "{e}");
    // Many address words that are really there: counted, refused, not stored.
    let mut isk = inet_sk(1, AF_INET6, TCP_ESTABLISHED, &[1, 2, 3, 4], 80, &[5, 6, 7, 8], 81, false);
    for _ in 0..1000 {
        field_u32(&mut isk, 11, 7);
    }
    let e = inet_sockets(&image(INETSK_MAGIC, &[isk])).unwrap_err();
    assert!(matches!(e, ImageError::BadSocket { ino: 1, problem: SocketProblem::AddressWords { words: 1004, .. }, .. }), "{e}");
}

// ---------------------------------------------------------------------------
// Hand-made images

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn field_u32(out: &mut Vec<u8>, field: u32, v: u32) {
    key(out, field, 0);
    varint(out, v.into());
}

fn field_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Unknown fields of every wire type.
fn junk(out: &mut Vec<u8>) {
    field_u32(out, 99, 12345);
    key(out, 100, 1);
    out.extend_from_slice(&[0xee; 8]);
    field_bytes(out, 101, b"\x08\x01 unknown nested bytes");
    key(out, 102, 5);
    out.extend_from_slice(&[0xdd; 4]);
    field_u32(out, 536_870_911, 1); // the largest field number
}

/// Address words as CRIU writes them: the address bytes as host-order u32s.
fn words(ip: &[u8]) -> Vec<u32> {
    ip.chunks(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[allow(clippy::too_many_arguments)]
fn inet_sk(ino: u32, family: u32, state: u32, src: &[u32], sport: u32, dst: &[u32], dport: u32, packed: bool) -> Vec<u8> {
    let mut m = Vec::new();
    for (f, v) in [(1, ino + 100), (2, ino), (3, family), (4, SOCK_STREAM), (5, IPPROTO_TCP), (6, state), (7, sport), (8, dport), (9, 2), (10, 0)] {
        field_u32(&mut m, f, v);
    }
    for (f, ws) in [(11, src), (12, dst)] {
        if packed {
            let mut p = Vec::new();
            for w in ws {
                varint(&mut p, (*w).into());
            }
            field_bytes(&mut m, f, &p);
        } else {
            for w in ws {
                field_u32(&mut m, f, *w);
            }
        }
    }
    field_bytes(&mut m, 13, &[0x08, 0x00]); // fown, skipped
    field_bytes(&mut m, 14, &[]); // opts, skipped
    m
}

fn file_entry(kind: u32, isk: Option<&[u8]>) -> Vec<u8> {
    let mut m = Vec::new();
    field_u32(&mut m, 1, kind);
    field_u32(&mut m, 2, 7);
    if let Some(isk) = isk {
        field_bytes(&mut m, 4, isk);
    }
    m
}

fn image(magic: u32, entries: &[Vec<u8>]) -> Vec<u8> {
    let mut b = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
    b.extend_from_slice(&magic.to_le_bytes());
    for e in entries {
        b.extend_from_slice(&(e.len() as u32).to_le_bytes());
        b.extend_from_slice(e);
    }
    b
}

fn stream(fields: &[(u32, u32)]) -> Vec<u8> {
    let mut m = Vec::new();
    for (f, v) in fields {
        field_u32(&mut m, *f, *v);
    }
    image(TCP_STREAM_MAGIC, &[m])
}

fn basic_stream() -> Vec<u8> {
    stream(&[(1, 0), (2, 1000), (3, 5), (4, 2005), (5, 0), (6, 0), (7, 1460)])
}

#[test]
fn unknown_fields_are_skipped_everywhere() {
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let mut isk = inet_sk(0x1234, AF_INET, TCP_ESTABLISHED, &words(&a), 8080, &words(&b), 50000, false);
    junk(&mut isk);
    let mut fe = Vec::new();
    junk(&mut fe);
    fe.extend(file_entry(FD_TYPE_INETSK, Some(&isk)));
    junk(&mut fe);
    let files = image(FILES_MAGIC, &[file_entry(1, None), fe, file_entry(5, None)]);
    let mut st = basic_stream();
    let mut extra = Vec::new();
    junk(&mut extra);
    // Append the junk to the stream entry and fix its size.
    let len = u32::from_le_bytes(st[8..12].try_into().unwrap()) + extra.len() as u32;
    st[8..12].copy_from_slice(&len.to_le_bytes());
    st.extend(extra);
    let c = established_connections(&files, |ino| (ino == 0x1234).then(|| st.clone())).unwrap();
    assert_eq!(
        c,
        vec![TcpImage {
            ino: 0x1234,
            local: v4(a, 8080),
            remote: v4(b, 50000),
            inq_seq: 1000,
            outq_seq: 2005,
            inq_len: 0,
            outq_len: 5,
            unsq_len: None,
        }]
    );
    assert_eq!(c[0].snd_una(), 2000);
    assert_eq!(c[0].snd_nxt(), None);
}

#[test]
fn packed_addresses_ipv6_and_old_inetsk_images() {
    let a: Ipv6Addr = "fd00::1:2:3".parse().unwrap();
    let b: Ipv6Addr = "fe80::abcd".parse().unwrap();
    let isk = inet_sk(9, AF_INET6, TCP_ESTABLISHED, &words(&a.octets()), 443, &words(&b.octets()), 1, true);
    // CRIU before 3.3: bare inet_sk_entry messages in inetsk.img.
    let s = inet_sockets(&image(INETSK_MAGIC, std::slice::from_ref(&isk))).unwrap();
    assert_eq!((s[0].local, s[0].remote), (SocketAddr::from((a, 443)), SocketAddr::from((b, 1))));
    // V1 images: no common magic.
    let mut old = INETSK_MAGIC.to_le_bytes().to_vec();
    old.extend_from_slice(&(isk.len() as u32).to_le_bytes());
    old.extend_from_slice(&isk);
    assert_eq!(inet_sockets(&old).unwrap(), s);
    // v0.1 wrote four words for an IPv4 address; the first is the address.
    let isk = inet_sk(9, AF_INET, TCP_ESTABLISHED, &words(&[192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 1, &words(&[192, 0, 2, 2]), 2, false);
    assert_eq!(inet_sockets(&image(INETSK_MAGIC, &[isk])).unwrap()[0].local, v4([192, 0, 2, 1], 1));
}

#[test]
fn sockets_not_established_are_left_out() {
    let w = words(&[10, 0, 0, 1]);
    let entries: Vec<Vec<u8>> =
        [10u32, 7, 8, 4, 2].iter().map(|state| file_entry(FD_TYPE_INETSK, Some(&inet_sk(*state, AF_INET, *state, &w, 1, &w, 2, false)))).collect();
    let files = image(FILES_MAGIC, &entries);
    assert_eq!(inet_sockets(&files).unwrap().len(), 5);
    let c = established_connections(&files, |ino| panic!("no stream should be read, asked for {ino:#x}")).unwrap();
    assert!(c.is_empty());
    // An established UDP socket (connected) is not TCP either.
    let mut udp = inet_sk(3, AF_INET, TCP_ESTABLISHED, &w, 1, &w, 2, false);
    field_u32(&mut udp, 4, 2);
    field_u32(&mut udp, 5, 17); // the later value wins, as in protobuf
    let files = image(FILES_MAGIC, &[file_entry(FD_TYPE_INETSK, Some(&udp))]);
    assert_eq!(inet_sockets(&files).unwrap()[0].sock_type, 2);
    assert!(established_connections(&files, |_| None).unwrap().is_empty());
}

#[test]
fn missing_required_fields() {
    let e = parse_tcp_stream(&stream(&[(1, 0), (2, 1), (3, 0)])).unwrap_err();
    assert!(matches!(e, ImageError::MissingField { field: "outq_seq (4)", offset: 12, .. }), "{e}");
    assert_eq!(e.to_string(), "tcp-stream image: the tcp_stream_entry at byte 12 lacks its required field outq_seq (4)");
    let e = inet_sockets(&image(FILES_MAGIC, &[file_entry(FD_TYPE_INETSK, None)])).unwrap_err();
    assert!(matches!(e, ImageError::MissingField { message: "file_entry", field: "isk (4)", .. }), "{e}");
    let mut no_type = Vec::new();
    field_u32(&mut no_type, 2, 1);
    assert!(matches!(inet_sockets(&image(FILES_MAGIC, &[no_type])), Err(ImageError::MissingField { field: "type (1)", .. })));
    // An isk without its ino.
    let mut isk = Vec::new();
    for (f, v) in [(1, 1), (3, AF_INET), (4, 1), (5, 6), (6, 1), (7, 1), (8, 1)] {
        field_u32(&mut isk, f, v);
    }
    let e = inet_sockets(&image(FILES_MAGIC, &[file_entry(FD_TYPE_INETSK, Some(&isk))])).unwrap_err();
    assert!(matches!(e, ImageError::MissingField { message: "inet_sk_entry", field: "ino", .. }), "{e}");
}

#[test]
fn bad_addresses_ports_and_values() {
    let w4 = words(&[10, 0, 0, 1]);
    let check = |isk: Vec<u8>| inet_sockets(&image(FILES_MAGIC, &[file_entry(FD_TYPE_INETSK, Some(&isk))])).unwrap_err();
    let e = check(inet_sk(5, AF_INET6, 1, &w4, 1, &w4, 2, false));
    assert!(matches!(e, ImageError::BadSocket { ino: 5, problem: SocketProblem::AddressWords { field: "src_addr", words: 1, .. }, .. }), "{e}");
    let e = check(inet_sk(5, AF_INET, 1, &w4, 1, &[], 2, false));
    assert!(matches!(e, ImageError::BadSocket { problem: SocketProblem::AddressWords { field: "dst_addr", words: 0, .. }, .. }), "{e}");
    let e = check(inet_sk(5, 1, 1, &w4, 1, &w4, 2, false));
    assert!(matches!(e, ImageError::BadSocket { problem: SocketProblem::UnknownFamily(1), .. }), "{e}");
    let e = check(inet_sk(5, AF_INET, 1, &w4, 70000, &w4, 2, false));
    assert!(matches!(e, ImageError::BadSocket { problem: SocketProblem::BadPort { field: "src_port", value: 70000 }, .. }), "{e}");
    // A uint32 field holding more than 32 bits.
    let mut isk = inet_sk(5, AF_INET, 1, &w4, 1, &w4, 2, false);
    key(&mut isk, 2, 0);
    varint(&mut isk, 1 << 33);
    let e = check(isk);
    assert!(matches!(e, ImageError::Malformed { problem: WireProblem::NotU32 { field: 2, name: "ino", .. }, .. }), "{e}");
    // A known scalar field with the wrong wire type.
    let mut isk = inet_sk(5, AF_INET, 1, &w4, 1, &w4, 2, false);
    field_bytes(&mut isk, 6, b"x");
    let e = check(isk);
    assert!(matches!(e, ImageError::Malformed { problem: WireProblem::BadWireType { field: 6, wire_type: 2 }, .. }), "{e}");
}

// ---------------------------------------------------------------------------
// Fuzz-style: nothing may panic

/// xorshift64*, deterministic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn decode_all(files: &[u8], stream: &[u8]) {
    let _ = inet_sockets(files);
    let _ = parse_tcp_stream(stream);
    let _ = established_connections(files, |_| Some(stream.to_vec()));
    // Each input also as the other kind of image.
    let _ = inet_sockets(stream);
    let _ = parse_tcp_stream(files);
}

#[test]
fn fuzz_prefixes_and_byte_flips_never_panic() {
    let fixtures: [(&[u8], &[u8]); 4] =
        [(SERVER_FILES, SERVER_9372), (SERVER_FILES, SERVER_9702), (CLIENT_FILES, CLIENT_937F), (CLIENT_FILES, CLIENT_9380)];
    for (files, stream) in fixtures {
        for n in 0..=files.len().max(stream.len()) {
            decode_all(&files[..n.min(files.len())], &stream[..n.min(stream.len())]);
        }
    }
    let mut rng = Rng(0x07e5_7c41_u64 ^ 0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0;
    for round in 0..20_000 {
        let (files, stream) = fixtures[round % fixtures.len()];
        let (mut f, mut s) = (files.to_vec(), stream.to_vec());
        for _ in 0..=rng.below(4) {
            let (buf, r) = if rng.below(2) == 0 { (&mut f, rng.next()) } else { (&mut s, rng.next()) };
            let at = (r as usize >> 8) % buf.len();
            match r % 4 {
                0 => buf[at] ^= 1 << (r >> 4 & 7), // one bit
                1 => buf[at] = r as u8 >> 2,       // one byte
                2 => buf[at] = 0xff,               // a long varint or a big size
                _ => {
                    let cut = at.max(1);
                    buf.truncate(cut); // and a cut
                }
            }
        }
        decode_all(&f, &s);
        if inet_sockets(&f).is_ok() {
            decoded += 1;
        }
    }
    // The flips are not all caught by the framing: some decode, wrongly or not.
    assert!(decoded > 0);
}
