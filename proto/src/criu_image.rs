//! CRIU's images of a dump's TCP connections, decoded without IO.
//!
//! After a restore with `--tcp-established` the target needs to know, for
//! each established connection the container held, its two ends and the
//! sequence numbers CRIU put back into the kernel. CRIU writes them into two
//! kinds of image; this module decodes both, with a minimal protobuf
//! wire-format reader of its own (no generated code, no dependency).
//!
//! # The image files (read from CRIU's sources, v4.2, commit 2cf8f13)
//!
//! **Layout** (`criu/image.c`: `img_write_magic`, `img_check_magic`;
//! `criu/protobuf.c`: `do_pb_read_one`; `lib/pycriu/images/images.py`, the
//! grammar at its top):
//!
//! ```text
//!  u32 IMG_COMMON_MAGIC 0x54564319     (absent in "V1" images, see below)
//!  u32 per-image magic
//!  { u32 size (host order: little-endian on x86_64)  <size bytes: one protobuf message>  [extra] }
//! ```
//!
//! Every image but `inventory.img` starts with the common magic when the
//! inventory says `CRTOOLS_IMAGES_V1_1`; very old dumps (`CRTOOLS_IMAGES_V1`)
//! start with the per-image magic alone (`criu/include/magic.h`,
//! `img_common_magic` in `criu/image.c`). Both are accepted here.
//! Per-image magics used here (`criu/include/magic.h`): `FILES_MAGIC`
//! 0x56303138, `INETSK_MAGIC` 0x56443851, `TCP_STREAM_MAGIC` 0x51465506.
//!
//! **Where inet sockets are** (`criu/sk-inet.c`, end of `do_dump_one_inet_fd`:
//! `pb_write_one(img_from_set(glob_imgset, CR_FD_FILES), &fe, PB_FILE)`):
//! since CRIU 3.3 (commit 55519df9f, 2017, "files: Move inet sockets into
//! files image") in `files.img`, as `file_entry` messages
//! (`images/fdinfo.proto`) with `type = 1` (`fd_types`, `INETSK = 4`),
//! `id = 2` and the socket in `isk = 4` (an `inet_sk_entry`). Older dumps
//! wrote bare `inet_sk_entry` messages into `inetsk.img`
//! (`criu/image-desc.c`: `FD_ENTRY(INETSK, "inetsk")`, `FD_ENTRY(FILES, "files")`).
//! [`inet_sockets`] reads either, telling them apart by the magic.
//!
//! **`inet_sk_entry`** (`images/sk-inet.proto`), the fields read here:
//! `id = 1`, `ino = 2`, `family = 3`, `type = 4`, `proto = 5`, `state = 6`,
//! `src_port = 7`, `dst_port = 8` (all `uint32`), `src_addr = 11` and
//! `dst_addr = 12` (`repeated uint32`, proto2 so unpacked by default; both
//! encodings are accepted). The address words are the raw bytes of the
//! kernel's `in_addr`/`in6_addr` (network order) copied with `memcpy` into
//! `uint32`s (`do_dump_one_inet_fd`, and back in `restore_sockaddr`), so each
//! word's bytes in the dumping host's byte order are the address bytes: one
//! word for AF_INET (`PB_ALEN_INET = 1`; CRIU accepts more, "v0.1 had 4"),
//! four for AF_INET6 (`PB_ALEN_INET6 = 4`; `inet_validate_address`).
//! `crit` shows the same with `socket.ntohl` (`lib/pycriu/images/pb2dict.py`).
//! The values of family, type, proto and state are Linux's: AF_INET 2,
//! AF_INET6 10, SOCK_STREAM 1, IPPROTO_TCP 6, TCP_ESTABLISHED 1, TCP_LISTEN
//! 10, TCP_CLOSE 7 (`sk_maps` in `pb2dict.py`); the state CRIU stores for a
//! dumped connection is `tcpi_state` from `libsoccr_save`
//! (`dump_tcp_conn_state` in `criu/sk-tcp.c`).
//! Every other field (fown, opts, ip_opts, tcp_opts, ...) is skipped.
//!
//! **`tcp-stream-<ino in lowercase hex>.img`** (`criu/image-desc.c`:
//! `FD_ENTRY(TCP_STREAM, "tcp-stream-%x")`, opened with the socket's `ino`
//! in `dump_tcp_conn_state`): one `tcp_stream_entry` (`images/tcp-stream.proto`)
//! followed by `inq_len` bytes of the receive queue and `outq_len` bytes of
//! the send queue (the "extra"; `tcp_stream_extra_handler` in `images.py`).
//! Fields: `inq_len = 1`, `inq_seq = 2`, `outq_len = 3`, `outq_seq = 4`,
//! `opt_mask = 5`, `snd_wscale = 6`, `mss_clamp = 7`, `rcv_wscale = 8`,
//! `timestamp = 9`, `cork = 10`, `nodelay = 11` (deprecated bools),
//! `unsq_len = 12`, `snd_wl1 = 13`, `snd_wnd = 14`, `max_window = 15`,
//! `rcv_wnd = 16`, `rcv_wup = 17`, all `uint32`. What the sequence numbers
//! are (the comment above `get_queue` in `soccr/soccr.c`):
//!
//! ```text
//!  inq_seq  = rcv_nxt                 inq_len  = rcv_nxt - copied_seq  (SIOCINQ)
//!  outq_seq = write_seq               outq_len = write_seq - snd_una   (SIOCOUTQ)
//!                                     unsq_len = write_seq - snd_nxt   (SIOCOUTQNSD)
//! ```
//!
//! so `outq_seq` is the end of the send queue, not `snd_nxt`: see
//! [`TcpStream::snd_una`] and [`TcpStream::snd_nxt`]. On restore libsoccr
//! sets the queues' sequences to `inq_seq - inq_len` and
//! `outq_seq - outq_len` and writes the queued bytes back, which brings the
//! socket to the same `rcv_nxt` and `write_seq`.
//!
//! # Safety of the decoder
//!
//! Every length read from the input is checked against the bytes that are
//! really there before it is used; nothing is allocated with a size taken
//! from the input (addresses are at most four words, kept in an array; the
//! list of sockets grows by one per entry actually read). Malformed input
//! gives an [`ImageError`] that says which image, which message, which byte
//! offset and what was wrong; it never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The common magic heading every image but the inventory (`criu/include/magic.h`).
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// `files.img`: `file_entry` messages (`criu/include/magic.h`).
pub const FILES_MAGIC: u32 = 0x5630_3138;
/// `inetsk.img` of dumps older than CRIU 3.3: `inet_sk_entry` messages.
pub const INETSK_MAGIC: u32 = 0x5644_3851;
/// `tcp-stream-<ino hex>.img`: one `tcp_stream_entry`, then queue bytes.
pub const TCP_STREAM_MAGIC: u32 = 0x5146_5506;

/// Linux `AF_INET`.
pub const AF_INET: u32 = 2;
/// Linux `AF_INET6`.
pub const AF_INET6: u32 = 10;
/// Linux `SOCK_STREAM`.
pub const SOCK_STREAM: u32 = 1;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u32 = 6;
/// Linux `TCP_ESTABLISHED` (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: u32 = 1;
/// `fd_types.INETSK` in `images/fdinfo.proto`.
pub const FD_TYPE_INETSK: u32 = 4;

/// The file CRIU writes a TCP connection's state to: `tcp-stream-<ino in hex>.img`.
pub fn tcp_stream_file_name(ino: u32) -> String {
    format!("tcp-stream-{ino:x}.img")
}

/// What was wrong with an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("{image}: truncated at byte {offset}: {what} needs {needed} bytes, {available} left")]
    Truncated { image: &'static str, offset: usize, what: &'static str, needed: usize, available: usize },
    #[error("{image}: magic {found:#010x} at byte {offset} is not {expected}")]
    BadMagic { image: &'static str, offset: usize, found: u32, expected: &'static str },
    #[error("{image}: entry at byte {offset} says it holds {len} bytes, only {available} follow")]
    EntryTooLong { image: &'static str, offset: usize, len: u32, available: usize },
    #[error("{image}: holds no entry")]
    Empty { image: &'static str },
    #[error("{image}: malformed {message} at byte {offset}: {problem}")]
    Malformed { image: &'static str, message: &'static str, offset: usize, problem: WireProblem },
    #[error("{image}: the {message} at byte {offset} lacks its required field {field}")]
    MissingField { image: &'static str, message: &'static str, offset: usize, field: &'static str },
    #[error("{image}: inet socket ino {ino:#x} (entry at byte {offset}): {problem}")]
    BadSocket { image: &'static str, ino: u32, offset: usize, problem: SocketProblem },
    #[error("established TCP socket ino {ino:#x} ({local} -> {remote}) has no tcp-stream-{ino:x}.img")]
    MissingStream { ino: u32, local: SocketAddr, remote: SocketAddr },
    #[error("tcp-stream-{ino:x}.img: {source}")]
    Stream {
        ino: u32,
        #[source]
        source: Box<ImageError>,
    },
}

/// A protobuf wire-format fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireProblem {
    #[error("a varint runs past the end of its message")]
    VarintTruncated,
    #[error("a varint is longer than 10 bytes or overflows 64 bits")]
    VarintTooLong,
    #[error("field key {0:#x} has field number 0 or above 2^29-1")]
    BadFieldNumber(u64),
    #[error("field {field} has wire type {wire_type}, which this decoder does not accept there")]
    BadWireType { field: u32, wire_type: u8 },
    #[error("field {field} says it holds {len} bytes, only {available} are left in its message")]
    LengthPastEnd { field: u32, len: u64, available: usize },
    #[error("field {field} needs {needed} fixed bytes, only {available} are left in its message")]
    FixedPastEnd { field: u32, needed: usize, available: usize },
    #[error("field {field} ({name}) holds {value}, more than a uint32")]
    NotU32 { field: u32, name: &'static str, value: u64 },
}

/// Why an `inet_sk_entry` cannot be turned into two socket addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketProblem {
    #[error("family {0} is neither AF_INET (2) nor AF_INET6 (10)")]
    UnknownFamily(u32),
    #[error("{field} has {words} address words; family {family} needs {needs}")]
    AddressWords { field: &'static str, family: u32, words: usize, needs: &'static str },
    #[error("{field} is {value}, not a port")]
    BadPort { field: &'static str, value: u32 },
}

/// One inet socket of the dump, as `files.img` (or `inetsk.img`) holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InetSocket {
    /// The file id the process's fdinfo entries refer to.
    pub id: u32,
    /// The socket's inode number; names its `tcp-stream-<ino hex>.img`.
    pub ino: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, ...
    pub sock_type: u32,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, ...
    pub protocol: u32,
    /// The TCP state (`TCP_ESTABLISHED`, `TCP_LISTEN`, `TCP_CLOSE`, ...).
    pub state: u32,
    /// `src_addr`/`src_port`: the container's end.
    pub local: SocketAddr,
    /// `dst_addr`/`dst_port`: the peer (unspecified for a listening socket).
    pub remote: SocketAddr,
}

impl InetSocket {
    /// A TCP stream socket in state ESTABLISHED: one CRIU dumped with
    /// `--tcp-established`, with a `tcp-stream` image of its own.
    pub fn is_established_tcp(&self) -> bool {
        self.sock_type == SOCK_STREAM && self.protocol == IPPROTO_TCP && self.state == TCP_ESTABLISHED
    }
}

/// A `tcp_stream_entry`: the sequence numbers and queue lengths CRIU saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpStream {
    /// Bytes received but not yet read by the application (`SIOCINQ`).
    pub inq_len: u32,
    /// `rcv_nxt`: the next sequence number expected from the peer.
    pub inq_seq: u32,
    /// Bytes in the send queue, sent or not, not yet acknowledged (`SIOCOUTQ`).
    pub outq_len: u32,
    /// `write_seq`: the sequence number after the last byte queued to send.
    pub outq_seq: u32,
    /// Bytes of the send queue never sent (`SIOCOUTQNSD`); CRIU 2.x on.
    pub unsq_len: Option<u32>,
    pub opt_mask: Option<u32>,
    pub snd_wscale: Option<u32>,
    pub mss_clamp: Option<u32>,
    pub rcv_wscale: Option<u32>,
    pub timestamp: Option<u32>,
    pub snd_wl1: Option<u32>,
    pub snd_wnd: Option<u32>,
    pub max_window: Option<u32>,
    pub rcv_wnd: Option<u32>,
    pub rcv_wup: Option<u32>,
}

impl TcpStream {
    /// `rcv_nxt`, the next byte expected from the peer (`inq_seq`).
    pub fn rcv_nxt(&self) -> u32 {
        self.inq_seq
    }
    /// `snd_una`, the oldest byte the peer has not acknowledged:
    /// `outq_seq - outq_len`; what the peer's `rcv_nxt` was.
    pub fn snd_una(&self) -> u32 {
        self.outq_seq.wrapping_sub(self.outq_len)
    }
    /// `snd_nxt`, the next byte to be sent for the first time:
    /// `outq_seq - unsq_len`, when the image has `unsq_len`.
    pub fn snd_nxt(&self) -> Option<u32> {
        self.unsq_len.map(|u| self.outq_seq.wrapping_sub(u))
    }
}

/// One established TCP connection of a dump: its ends and saved sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpImage {
    /// The socket's inode number at dump time (names its tcp-stream image).
    pub ino: u32,
    /// The container's end.
    pub local: SocketAddr,
    /// The peer's end.
    pub remote: SocketAddr,
    /// `rcv_nxt` of the restored socket: the next byte it expects from the peer.
    pub inq_seq: u32,
    /// `write_seq`: the end of its send queue (not `snd_nxt`; see [`TcpImage::snd_nxt`]).
    pub outq_seq: u32,
    /// Received bytes the application had not read.
    pub inq_len: u32,
    /// Queued bytes the peer had not acknowledged, sent or not.
    pub outq_len: u32,
    /// Queued bytes never sent, when the image says.
    pub unsq_len: Option<u32>,
}

impl TcpImage {
    /// Joins a socket from `files.img` with its `tcp-stream` image.
    pub fn from_parts(socket: &InetSocket, stream: &TcpStream) -> TcpImage {
        TcpImage {
            ino: socket.ino,
            local: socket.local,
            remote: socket.remote,
            inq_seq: stream.inq_seq,
            outq_seq: stream.outq_seq,
            inq_len: stream.inq_len,
            outq_len: stream.outq_len,
            unsq_len: stream.unsq_len,
        }
    }
    /// `snd_una = outq_seq - outq_len`: the peer's `rcv_nxt` when the dump was made.
    pub fn snd_una(&self) -> u32 {
        self.outq_seq.wrapping_sub(self.outq_len)
    }
    /// `snd_nxt = outq_seq - unsq_len`, when the image has `unsq_len`.
    pub fn snd_nxt(&self) -> Option<u32> {
        self.unsq_len.map(|u| self.outq_seq.wrapping_sub(u))
    }
}

/// Every inet socket of a `files.img` (CRIU 3.3 and later) or an
/// `inetsk.img` (older), told apart by the image's magic. Other file
/// entries (regular files, pipes, unix sockets, ...) are skipped.
pub fn inet_sockets(img: &[u8]) -> Result<Vec<InetSocket>, ImageError> {
    let (magic, magic_at, start) = read_magic(img, "files.img")?;
    let (image, in_files) = match magic {
        FILES_MAGIC => ("files.img", true),
        INETSK_MAGIC => ("inetsk.img", false),
        found => {
            return Err(ImageError::BadMagic {
                image: "files.img",
                offset: magic_at,
                found,
                expected: "FILES_MAGIC 0x56303138 (files.img) or INETSK_MAGIC 0x56443851 (inetsk.img)",
            })
        }
    };
    let mut out = Vec::new();
    let mut entries = Entries { img, pos: start, image };
    while let Some((at, end)) = entries.next_entry()? {
        let message = if in_files { "file_entry" } else { "inet_sk_entry" };
        let msg = Msg { buf: img, pos: at, end, image, message, field_at: at };
        let isk = if in_files { file_entry_isk(msg)? } else { Some(msg) };
        if let Some(isk) = isk {
            out.push(inet_sk_entry(isk)?);
        }
    }
    Ok(out)
}

/// Decodes a `tcp-stream-<ino>.img`: its one `tcp_stream_entry`. The queue
/// bytes that follow the entry are not needed and not checked, so the head
/// of the file is enough (the entry is under 100 bytes).
pub fn parse_tcp_stream(bytes: &[u8]) -> Result<TcpStream, ImageError> {
    const IMAGE: &str = "tcp-stream image";
    let (magic, magic_at, start) = read_magic(bytes, IMAGE)?;
    if magic != TCP_STREAM_MAGIC {
        return Err(ImageError::BadMagic { image: IMAGE, offset: magic_at, found: magic, expected: "TCP_STREAM_MAGIC 0x51465506" });
    }
    let mut entries = Entries { img: bytes, pos: start, image: IMAGE };
    let Some((at, end)) = entries.next_entry()? else {
        return Err(ImageError::Empty { image: IMAGE });
    };
    let mut msg = Msg { buf: bytes, pos: at, end, image: IMAGE, message: "tcp_stream_entry", field_at: at };
    let mut s = TcpStream::default();
    let (mut inq_len, mut inq_seq, mut outq_len, mut outq_seq) = (None, None, None, None);
    while let Some((field, value)) = msg.next_field()? {
        let slot = match field {
            1 => &mut inq_len,
            2 => &mut inq_seq,
            3 => &mut outq_len,
            4 => &mut outq_seq,
            5 => &mut s.opt_mask,
            6 => &mut s.snd_wscale,
            7 => &mut s.mss_clamp,
            8 => &mut s.rcv_wscale,
            9 => &mut s.timestamp,
            12 => &mut s.unsq_len,
            13 => &mut s.snd_wl1,
            14 => &mut s.snd_wnd,
            15 => &mut s.max_window,
            16 => &mut s.rcv_wnd,
            17 => &mut s.rcv_wup,
            _ => continue, // cork, nodelay and fields added after 4.2
        };
        *slot = Some(msg.uint32(field, TCP_STREAM_FIELDS[field as usize], value)?);
    }
    let need = |v: Option<u32>, field| v.ok_or(ImageError::MissingField { image: IMAGE, message: "tcp_stream_entry", offset: at, field });
    s.inq_len = need(inq_len, "inq_len (1)")?;
    s.inq_seq = need(inq_seq, "inq_seq (2)")?;
    s.outq_len = need(outq_len, "outq_len (3)")?;
    s.outq_seq = need(outq_seq, "outq_seq (4)")?;
    Ok(s)
}

const TCP_STREAM_FIELDS: [&str; 18] = [
    "",
    "inq_len",
    "inq_seq",
    "outq_len",
    "outq_seq",
    "opt_mask",
    "snd_wscale",
    "mss_clamp",
    "rcv_wscale",
    "timestamp",
    "cork",
    "nodelay",
    "unsq_len",
    "snd_wl1",
    "snd_wnd",
    "max_window",
    "rcv_wnd",
    "rcv_wup",
];

/// The established TCP connections of a dump: every established TCP socket
/// of `files_img` (or an old `inetsk.img`) joined with its tcp-stream image,
/// which `read_stream(ino)` returns (the whole file or at least its head;
/// `None` when it is missing, which is an error: CRIU writes one for each).
/// Listening, closed and UDP sockets are left out.
pub fn established_connections(files_img: &[u8], mut read_stream: impl FnMut(u32) -> Option<Vec<u8>>) -> Result<Vec<TcpImage>, ImageError> {
    let mut out = Vec::new();
    for sk in inet_sockets(files_img)?.iter().filter(|s| s.is_established_tcp()) {
        let bytes = read_stream(sk.ino).ok_or(ImageError::MissingStream { ino: sk.ino, local: sk.local, remote: sk.remote })?;
        let stream = parse_tcp_stream(&bytes).map_err(|e| ImageError::Stream { ino: sk.ino, source: Box::new(e) })?;
        out.push(TcpImage::from_parts(sk, &stream));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Image framing

fn u32_at(img: &[u8], at: usize, image: &'static str, what: &'static str) -> Result<u32, ImageError> {
    match img.get(at..).and_then(|rest| rest.get(..4)) {
        Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(ImageError::Truncated { image, offset: at, what, needed: 4, available: img.len().saturating_sub(at) }),
    }
}

/// The per-image magic, where it is, and where the entries start.
fn read_magic(img: &[u8], image: &'static str) -> Result<(u32, usize, usize), ImageError> {
    let first = u32_at(img, 0, image, "the image magic")?;
    if first == IMG_COMMON_MAGIC {
        Ok((u32_at(img, 4, image, "the per-image magic")?, 4, 8))
    } else {
        Ok((first, 0, 4))
    }
}

/// `{ u32 size, size bytes }` entries up to the end of the image.
struct Entries<'a> {
    img: &'a [u8],
    pos: usize,
    image: &'static str,
}

impl Entries<'_> {
    /// The next entry's message as a byte range, or `None` at the end.
    fn next_entry(&mut self) -> Result<Option<(usize, usize)>, ImageError> {
        if self.pos >= self.img.len() {
            return Ok(None);
        }
        let len = u32_at(self.img, self.pos, self.image, "an entry's size")?;
        let at = self.pos + 4;
        let available = self.img.len() - at;
        if len as usize > available {
            return Err(ImageError::EntryTooLong { image: self.image, offset: self.pos, len, available });
        }
        self.pos = at + len as usize;
        Ok(Some((at, self.pos)))
    }
}

// ---------------------------------------------------------------------------
// Protobuf wire format

/// A field's value, as far as the wire format says.
#[derive(Clone, Copy)]
enum Value {
    Varint(u64),
    /// A length-delimited field: its bytes' range in the image.
    Bytes(usize, usize),
    /// fixed32 and fixed64, skipped.
    Fixed,
}

/// One protobuf message: a byte range of the image, walked field by field.
#[derive(Clone, Copy)]
struct Msg<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    image: &'static str,
    message: &'static str,
    /// Where the field last returned by `next_field` starts (its key).
    field_at: usize,
}

impl<'a> Msg<'a> {
    fn malformed(&self, offset: usize, problem: WireProblem) -> ImageError {
        ImageError::Malformed { image: self.image, message: self.message, offset, problem }
    }

    fn varint(&mut self) -> Result<u64, ImageError> {
        let start = self.pos;
        let mut v = 0u64;
        for i in 0..10 {
            if self.pos >= self.end {
                return Err(self.malformed(start, WireProblem::VarintTruncated));
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(self.malformed(start, WireProblem::VarintTooLong));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.malformed(start, WireProblem::VarintTooLong))
    }

    /// The next field number and value, or `None` at the message's end.
    fn next_field(&mut self) -> Result<Option<(u32, Value)>, ImageError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let key_at = self.pos;
        self.field_at = key_at;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return Err(self.malformed(key_at, WireProblem::BadFieldNumber(key)));
        }
        let field = field as u32;
        let wire_type = (key & 7) as u8;
        let left = self.end - self.pos;
        let value = match wire_type {
            0 => Value::Varint(self.varint()?),
            1 | 5 => {
                let needed = if wire_type == 1 { 8 } else { 4 };
                if left < needed {
                    return Err(self.malformed(key_at, WireProblem::FixedPastEnd { field, needed, available: left }));
                }
                self.pos += needed;
                Value::Fixed
            }
            2 => {
                let len = self.varint()?;
                let available = self.end - self.pos;
                if len > available as u64 {
                    return Err(self.malformed(key_at, WireProblem::LengthPastEnd { field, len, available }));
                }
                let start = self.pos;
                self.pos += len as usize;
                Value::Bytes(start, self.pos)
            }
            // Groups (3, 4) are deprecated and unused by CRIU; 6 and 7 do not exist.
            _ => return Err(self.malformed(key_at, WireProblem::BadWireType { field, wire_type })),
        };
        Ok(Some((field, value)))
    }

    /// A `uint32` field's value; anything but a varint that fits is an error.
    fn uint32(&self, field: u32, name: &'static str, value: Value) -> Result<u32, ImageError> {
        match value {
            Value::Varint(v) => u32::try_from(v).map_err(|_| self.malformed(self.field_at, WireProblem::NotU32 { field, name, value: v })),
            _ => Err(self.malformed(self.field_at, WireProblem::BadWireType { field, wire_type: wire_type_of(value) })),
        }
    }

    /// A sub-message at the given range.
    fn sub(&self, start: usize, end: usize, message: &'static str) -> Msg<'a> {
        Msg { buf: self.buf, pos: start, end, image: self.image, message, field_at: start }
    }
}

fn wire_type_of(v: Value) -> u8 {
    match v {
        Value::Varint(_) => 0,
        Value::Bytes(..) => 2,
        Value::Fixed => 1,
    }
}

/// Up to four address words of a `repeated uint32` field.
#[derive(Default, Clone, Copy)]
struct Words {
    w: [u32; 4],
    n: usize,
}

impl Words {
    /// Adds one decoded word; a fifth one makes the field invalid (counted, not stored).
    fn push(&mut self, v: u32) {
        if let Some(slot) = self.w.get_mut(self.n) {
            *slot = v;
        }
        self.n = self.n.saturating_add(1);
    }
}

/// Adds one occurrence of a repeated uint32 field, unpacked (a varint) or packed.
fn repeated_u32(msg: &Msg<'_>, field: u32, name: &'static str, value: Value, into: &mut Words) -> Result<(), ImageError> {
    match value {
        Value::Bytes(start, end) => {
            let mut packed = msg.sub(start, end, msg.message);
            while packed.pos < packed.end {
                let v = packed.varint()?;
                into.push(u32::try_from(v).map_err(|_| msg.malformed(start, WireProblem::NotU32 { field, name, value: v }))?);
            }
            Ok(())
        }
        other => {
            into.push(msg.uint32(field, name, other)?);
            Ok(())
        }
    }
}

/// The `isk` of a `file_entry` whose type is INETSK; `None` for other files.
fn file_entry_isk(mut msg: Msg<'_>) -> Result<Option<Msg<'_>>, ImageError> {
    let at = msg.pos;
    let mut kind = None;
    let mut isk = None;
    while let Some((field, value)) = msg.next_field()? {
        match field {
            1 => kind = Some(msg.uint32(1, "type", value)?),
            4 => match value {
                Value::Bytes(s, e) => isk = Some(msg.sub(s, e, "inet_sk_entry")),
                other => return Err(msg.malformed(msg.field_at, WireProblem::BadWireType { field, wire_type: wire_type_of(other) })),
            },
            _ => {}
        }
    }
    let missing = |field| ImageError::MissingField { image: msg.image, message: "file_entry", offset: at, field };
    match kind {
        None => Err(missing("type (1)")),
        Some(FD_TYPE_INETSK) => isk.map(Some).ok_or(missing("isk (4)")),
        Some(_) => Ok(None),
    }
}

fn inet_sk_entry(mut msg: Msg<'_>) -> Result<InetSocket, ImageError> {
    const NAMES: [&str; 9] = ["", "id", "ino", "family", "type", "proto", "state", "src_port", "dst_port"];
    let at = msg.pos;
    let mut v: [Option<u32>; 9] = [None; 9];
    let (mut src, mut dst) = (Words::default(), Words::default());
    while let Some((field, value)) = msg.next_field()? {
        match field {
            1..=8 => v[field as usize] = Some(msg.uint32(field, NAMES[field as usize], value)?),
            11 => repeated_u32(&msg, field, "src_addr", value, &mut src)?,
            12 => repeated_u32(&msg, field, "dst_addr", value, &mut dst)?,
            _ => {}
        }
    }
    let image = msg.image;
    let need = |i: usize| v[i].ok_or(ImageError::MissingField { image, message: "inet_sk_entry", offset: at, field: NAMES[i] });
    let (id, ino, family, sock_type, protocol, state, sport, dport) =
        (need(1)?, need(2)?, need(3)?, need(4)?, need(5)?, need(6)?, need(7)?, need(8)?);
    let bad = |problem| ImageError::BadSocket { image, ino, offset: at, problem };
    let local = socket_addr(family, "src_addr", &src, "src_port", sport).map_err(bad)?;
    let remote = socket_addr(family, "dst_addr", &dst, "dst_port", dport).map_err(bad)?;
    Ok(InetSocket { id, ino, family, sock_type, protocol, state, local, remote })
}

/// The address words are in_addr/in6_addr bytes `memcpy`d into host-order
/// `uint32`s by the dumping CRIU; CRIU restores only on the architecture it
/// dumped on, so the words' native-order bytes are the address.
fn socket_addr(family: u32, addr_field: &'static str, words: &Words, port_field: &'static str, port: u32) -> Result<SocketAddr, SocketProblem> {
    let port = u16::try_from(port).map_err(|_| SocketProblem::BadPort { field: port_field, value: port })?;
    let ip = match (family, words.n) {
        (AF_INET, 1..=4) => IpAddr::V4(Ipv4Addr::from(words.w[0].to_ne_bytes())),
        (AF_INET6, 4) => {
            let mut b = [0u8; 16];
            for (chunk, w) in b.chunks_exact_mut(4).zip(words.w) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        (AF_INET, n) => return Err(SocketProblem::AddressWords { field: addr_field, family, words: n, needs: "1 to 4" }),
        (AF_INET6, n) => return Err(SocketProblem::AddressWords { field: addr_field, family, words: n, needs: "4" }),
        (f, _) => return Err(SocketProblem::UnknownFamily(f)),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(b: &[u8]) -> Msg<'_> {
        Msg { buf: b, pos: 0, end: b.len(), image: "test", message: "m", field_at: 0 }
    }

    #[test]
    fn varints() {
        assert_eq!(msg(&[0x00]).varint().unwrap(), 0);
        assert_eq!(msg(&[0x96, 0x01]).varint().unwrap(), 150);
        let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(msg(&max).varint().unwrap(), u64::MAX);
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(msg(&over).varint(), Err(ImageError::Malformed { problem: WireProblem::VarintTooLong, .. })));
        let long = [0x80; 11];
        assert!(matches!(msg(&long).varint(), Err(ImageError::Malformed { problem: WireProblem::VarintTooLong, .. })));
        assert!(matches!(msg(&[0x80, 0x80]).varint(), Err(ImageError::Malformed { problem: WireProblem::VarintTruncated, .. })));
    }

    #[test]
    fn fields_stay_inside_their_message() {
        // field 2, length 5, but only 2 bytes follow
        let b = [0x12, 0x05, 0x01, 0x02];
        let e = msg(&b).next_field().err().unwrap();
        assert!(matches!(e, ImageError::Malformed { problem: WireProblem::LengthPastEnd { field: 2, len: 5, available: 2 }, .. }), "{e}");
        // a fixed64 with 3 bytes left
        let b = [0x09, 1, 2, 3];
        assert!(matches!(msg(&b).next_field(), Err(ImageError::Malformed { problem: WireProblem::FixedPastEnd { .. }, .. })));
        // a huge length must not wrap around
        let b = [0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(msg(&b).next_field(), Err(ImageError::Malformed { problem: WireProblem::LengthPastEnd { .. }, .. })));
        // field number 0, and a group
        assert!(matches!(msg(&[0x00, 0x00]).next_field(), Err(ImageError::Malformed { problem: WireProblem::BadFieldNumber(0), .. })));
        assert!(matches!(msg(&[0x0b]).next_field(), Err(ImageError::Malformed { problem: WireProblem::BadWireType { field: 1, wire_type: 3 }, .. })));
    }

    #[test]
    fn fifth_address_word_is_counted_not_stored() {
        let mut w = Words::default();
        for i in 0..6 {
            w.push(i);
        }
        assert_eq!(w.n, 6);
        assert_eq!(w.w, [0, 1, 2, 3]);
        assert!(matches!(socket_addr(AF_INET6, "src_addr", &w, "src_port", 1), Err(SocketProblem::AddressWords { words: 6, .. })));
        assert!(matches!(socket_addr(AF_INET, "src_addr", &w, "src_port", 1 << 16), Err(SocketProblem::BadPort { .. })));
    }
}
