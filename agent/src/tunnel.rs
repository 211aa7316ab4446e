//! The page tunnel of a post-copy migration: CRIU's page traffic between
//! the target's `criu lazy-pages` and the source's CRIU page server, over
//! the agents' QUIC link (no port opened between hosts, the same mutual
//! TLS), surviving a link that drops and comes back.
//!
//! ```text
//!  target                                                source
//!  criu lazy-pages ─TCP─▶ 127.0.0.1:Q  ══ QUIC (Request::Pages) ══  ─TCP─▶ 127.0.0.1:P  CRIU page server
//!                         End + Outbox     legs: one per connection    End + Outbox      (the frozen container)
//! ```
//!
//! CRIU cannot lose its connection safely: a lazy-pages daemon whose page
//! server went away fills the missing pages with zeros and lets the
//! container run on, and a dumping CRIU whose client went away resumes the
//! source's copy (two copies, one corrupt). So neither TCP connection ever
//! closes while the fill is incomplete. Each side keeps an [`End`]: its
//! TCP connection, the bytes it sent that the peer has not yet confirmed
//! ([`Outbox`]) and how many it delivered. The QUIC stream between them is
//! a *leg*; when a leg dies with its connection, the source opens another
//! on a new connection, both say how much they delivered (`Hello`), resend
//! what the other lacks and carry on. While no leg runs, CRIU's requests
//! and pages wait in the kernel's socket buffers and the container's
//! page faults wait with them: the target never runs past a page it
//! cannot get.
//!
//! Frames on a leg, each way: `H` + u64 (bytes delivered so far, first),
//! `D` + u32 length + bytes (at most [`MAX_DATA`]), `A` + u64 (delivered so
//! far), `E` (this side's CRIU closed its end); and from the source only,
//! `P` + u32 first + u32 count: pages the target holds in the migration's
//! base (`hash-pre-copy`'s, `pages.rs`), to deliver from there.
//!
//! On top of a base, the source reads the page server's replies
//! ([`Replies`]) and sends each page the base holds as its number there
//! (9 bytes for up to [`MAX_REF_PAGES`] pages) instead of its 4 KiB. What
//! is delivered, confirmed and resent stays the bytes CRIU exchanges:
//! a resend after a lost leg sends them whole.

use crate::pages::{PageIndex, PageStore};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tern_proto::delta::{PageCutter, Piece};
use tern_proto::MigrationId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The largest data frame a peer may send.
pub const MAX_DATA: usize = 1 << 20;
/// A page, as CRIU's page server sends them.
pub use tern_proto::delta::PAGE;
/// The most pages one `P` frame names (as many bytes as a data frame).
pub const MAX_REF_PAGES: u32 = (MAX_DATA / PAGE) as u32;
/// The page server's reply that pages follow: `PS_IOV_ADD_F` (6) with
/// `PE_PRESENT` (1 << 2) in the flags above bit 16 (`encode_ps_cmd` in
/// `criu/page-xfer.c`).
const ADD_F_PRESENT: u32 = (1 << 2) << 16 | 6;
/// The most pages this side expects in one reply (CRIU answers a fault
/// with a few pages, its background fill with at most a few MiB): a
/// reply claiming more is not parsed, only passed on.
const MAX_REPLY_PAGES: u64 = 1 << 18;
/// What one side reads from CRIU at once.
const READ_CHUNK: usize = 256 << 10;
/// The most bytes kept for resending: past it, the side stops reading
/// from CRIU until the peer confirms some (CRIU then waits on its socket).
const OUTBOX_CAP: usize = 64 << 20;
/// How often delivered bytes are confirmed while data flows.
const ACK_EVERY: Duration = Duration::from_millis(50);

/// The size of a request to CRIU's page server (`struct page_server_iov`
/// in `criu/page-xfer.c`: a u32 command, 4 bytes of padding, then u64
/// page count, address and process; little-endian on x86-64). Found the
/// hard way: with 24, CRIU waited for the rest of the request.
pub const PS_IOV_SIZE: u64 = 32;
/// A page-server command CRIU does not know (`PS_IOV_*` are 1 to 7 and
/// 0x1023, 0x1024): it fails the transfer on it.
const UNKNOWN_COMMAND: u32 = 0xbeef;

/// What ends a page-server session as failed, after `delivered` bytes of
/// requests: the rest of a request cut short (with no valid fields), then
/// one with a command CRIU does not know.
pub fn poison(delivered: u64) -> Vec<u8> {
    let partial = (delivered % PS_IOV_SIZE) as usize;
    let mut v = if partial == 0 { Vec::new() } else { vec![0xff; PS_IOV_SIZE as usize - partial] };
    v.extend_from_slice(&UNKNOWN_COMMAND.to_le_bytes());
    v.resize(v.len() + PS_IOV_SIZE as usize - 4, 0);
    v
}

/// Bytes sent and not yet confirmed by the peer, for resending on a new
/// leg. Offsets count every byte this side ever sent.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The offset of `buf[0]`: every byte before it was confirmed.
    base: u64,
    buf: VecDeque<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TunnelError {
    #[error("the peer confirmed byte {got} of the page stream, but only {end} were sent")]
    AckBeyondEnd { got: u64, end: u64 },
    #[error("the peer confirmed byte {got} of the page stream after confirming {base}: it lost pages it had confirmed")]
    AckBackwards { got: u64, base: u64 },
    #[error("a page-tunnel frame of {0} bytes (at most {MAX_DATA})")]
    TooLarge(usize),
    #[error("an unknown page-tunnel frame ({0:#x})")]
    UnknownFrame(u8),
    #[error("the leg's first frame was not a Hello")]
    NoHello,
    #[error("the local CRIU connection: {0}")]
    Local(String),
    #[error("the link: {0}")]
    Link(String),
    #[error("the move was given up while the link was lost (`tern post-copy give-up`)")]
    GaveUp,
    #[error("the source named pages {first}..+{count} of a base this side does not hold ({why})")]
    NoBasePages { first: u32, count: u32, why: String },
    #[error("a page-tunnel frame naming {0} base pages (1 to {MAX_REF_PAGES})")]
    BadPageCount(u32),
}

impl Outbox {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
    }

    /// The offset after the last byte sent.
    pub fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The peer holds every byte before `upto`: they need no resending.
    pub fn ack(&mut self, upto: u64) -> Result<(), TunnelError> {
        if upto > self.end() {
            return Err(TunnelError::AckBeyondEnd { got: upto, end: self.end() });
        }
        if upto < self.base {
            return Err(TunnelError::AckBackwards { got: upto, base: self.base });
        }
        self.buf.drain(..(upto - self.base) as usize);
        self.base = upto;
        Ok(())
    }

    /// Everything not yet confirmed, in frames of at most `chunk` bytes.
    pub fn pending(&self, chunk: usize) -> Vec<Vec<u8>> {
        let (a, b) = self.buf.as_slices();
        a.chunks(chunk).chain(b.chunks(chunk)).map(<[u8]>::to_vec).collect()
    }
}

/// One frame of a leg.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(u64),
    Data(Vec<u8>),
    /// Pages `first .. first + count` of the base, in its numbering.
    Pages {
        first: u32,
        count: u32,
    },
    Ack(u64),
    End,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Hello(n) => [&[b'H'][..], &n.to_be_bytes()].concat(),
            Frame::Ack(n) => [&[b'A'][..], &n.to_be_bytes()].concat(),
            Frame::End => vec![b'E'],
            Frame::Data(d) => [&[b'D'][..], &(d.len() as u32).to_be_bytes(), d].concat(),
            Frame::Pages { first, count } => [&[b'P'][..], &first.to_be_bytes(), &count.to_be_bytes()].concat(),
        }
    }

    /// Reads one frame; `None` at the stream's clean end.
    pub async fn read(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<Option<Frame>, TunnelError> {
        let link = |e: std::io::Error| TunnelError::Link(e.to_string());
        let mut tag = [0u8; 1];
        if r.read(&mut tag).await.map_err(link)? == 0 {
            return Ok(None);
        }
        let mut n8 = [0u8; 8];
        Ok(Some(match tag[0] {
            b'H' | b'A' => {
                r.read_exact(&mut n8).await.map_err(link)?;
                let n = u64::from_be_bytes(n8);
                if tag[0] == b'H' {
                    Frame::Hello(n)
                } else {
                    Frame::Ack(n)
                }
            }
            b'E' => Frame::End,
            b'P' => {
                r.read_exact(&mut n8).await.map_err(link)?;
                let first = u32::from_be_bytes(n8[..4].try_into().expect("4 bytes"));
                let count = u32::from_be_bytes(n8[4..].try_into().expect("4 bytes"));
                if !(1..=MAX_REF_PAGES).contains(&count) {
                    return Err(TunnelError::BadPageCount(count));
                }
                Frame::Pages { first, count }
            }
            b'D' => {
                let mut n4 = [0u8; 4];
                r.read_exact(&mut n4).await.map_err(link)?;
                let len = u32::from_be_bytes(n4) as usize;
                if len > MAX_DATA {
                    return Err(TunnelError::TooLarge(len));
                }
                let mut d = vec![0u8; len];
                r.read_exact(&mut d).await.map_err(link)?;
                Frame::Data(d)
            }
            other => return Err(TunnelError::UnknownFrame(other)),
        }))
    }
}

/// The page server's replies, cut into pages, as they are read. Each
/// reply is a `struct page_server_iov` ([`PS_IOV_SIZE`] bytes: a u32
/// command, padding, then u64 page count, address and process) and, for
/// `PS_IOV_ADD_F` with `PE_PRESENT`, that many pages. Nothing is held
/// back but the part of a page read so far (the rest of a reply follows
/// it at once): a header passes on as it arrives, and so does what this
/// cannot read as a reply (the u32 status that answers a close) and,
/// after a reply it does not know, everything else.
#[derive(Debug, Default)]
pub struct Replies {
    header: Vec<u8>,
    page: PageCutter,
    /// Pages still to come in the current reply.
    left: u64,
    /// A reply this does not know went by: pass everything on.
    lost: bool,
}

impl Replies {
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Piece<'_>)) {
        while !bytes.is_empty() {
            if self.lost {
                out(Piece::Raw(bytes));
                return;
            }
            if self.left == 0 {
                let take = (PS_IOV_SIZE as usize - self.header.len()).min(bytes.len());
                self.header.extend_from_slice(&bytes[..take]);
                out(Piece::Raw(&bytes[..take]));
                bytes = &bytes[take..];
                if self.header.len() == PS_IOV_SIZE as usize {
                    let cmd = u32::from_le_bytes(self.header[..4].try_into().expect("4 bytes"));
                    let pages = u64::from_le_bytes(self.header[8..16].try_into().expect("8 bytes"));
                    self.header.clear();
                    if cmd == ADD_F_PRESENT && (1..=MAX_REPLY_PAGES).contains(&pages) {
                        self.left = pages;
                    } else {
                        self.lost = true;
                    }
                }
                continue;
            }
            let (taken, pages) = self.page.cut(bytes, self.left, out);
            bytes = &bytes[taken..];
            self.left -= pages;
        }
    }
}

/// The source's side on top of a base: the page server's replies become
/// frames, a page the base holds as a `P` frame.
pub struct Dedupe {
    index: Arc<PageIndex>,
    replies: Replies,
    /// Pages sent as their number in the base.
    pub from_base: Arc<AtomicU64>,
}

impl Dedupe {
    pub fn new(index: Arc<PageIndex>) -> Dedupe {
        Dedupe { index, replies: Replies::default(), from_base: Default::default() }
    }

    /// The frames that carry `bytes`, the next bytes of the page server's
    /// replies, in order.
    pub fn frames(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut raw: Vec<u8> = Vec::new();
        let mut run: Option<(u32, u32)> = None;
        let (index, from_base) = (&self.index, &self.from_base);
        let flush_run = |run: &mut Option<(u32, u32)>, frames: &mut Vec<Frame>| {
            if let Some((first, count)) = run.take() {
                frames.push(Frame::Pages { first, count });
            }
        };
        let flush_raw = |raw: &mut Vec<u8>, frames: &mut Vec<Frame>| {
            for c in raw.chunks(MAX_DATA) {
                frames.push(Frame::Data(c.to_vec()));
            }
            raw.clear();
        };
        self.replies.feed(bytes, &mut |piece| {
            let (data, at) = match piece {
                Piece::Raw(b) => (b, None),
                Piece::Page(p) => (p, index.lookup(p)),
            };
            match at {
                Some(n) => {
                    flush_raw(&mut raw, &mut frames);
                    from_base.fetch_add(1, Ordering::Relaxed);
                    match &mut run {
                        Some((first, count)) if *first + *count == n && *count < MAX_REF_PAGES => *count += 1,
                        _ => {
                            flush_run(&mut run, &mut frames);
                            run = Some((n, 1));
                        }
                    }
                }
                None => {
                    flush_run(&mut run, &mut frames);
                    raw.extend_from_slice(data);
                }
            }
        });
        flush_run(&mut run, &mut frames);
        flush_raw(&mut raw, &mut frames);
        frames
    }
}

/// One side of the tunnel: its CRIU connection and what it owes the peer.
pub struct End {
    tcp: TcpStream,
    outbox: Outbox,
    /// Bytes from the peer written to CRIU.
    delivered: u64,
    /// CRIU closed its end (sent to the peer as `E`).
    local_closed: bool,
    /// The peer's CRIU closed its end: this side's CRIU was told.
    peer_closed: bool,
    /// Bytes from CRIU, in all (for the logs, the report and the
    /// operator's view, `fills.rs`, which may share the counter).
    pub read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// This side's sending cap, bytes/s (0: none): the source applies the
    /// migration's `--bandwidth` to the pages too.
    rate: u64,
    /// The source's side: its CRIU may close only after the target's did
    /// (the daemon ends the fill). An earlier close is CRIU's failure, and
    /// passing it on would make the daemon fill the rest with zeros.
    source: bool,
    /// The source's side on top of a base ([`End::with_index`]).
    dedupe: Option<Dedupe>,
    /// The target's side: the base whose pages `P` frames name.
    base: Option<Arc<PageStore>>,
}

/// How a leg ended.
#[derive(Debug)]
pub enum LegEnd {
    /// Both CRIUs closed their ends and nothing is owed: the fill is over.
    Finished,
    /// The leg failed with its link: open another.
    Lost(TunnelError),
    /// A CRIU failed, or the peer broke the protocol: no leg can help.
    Failed(TunnelError),
}

impl End {
    pub fn new(tcp: TcpStream, rate: u64, source: bool) -> End {
        End {
            tcp,
            outbox: Outbox::default(),
            delivered: 0,
            local_closed: false,
            peer_closed: false,
            read: Default::default(),
            rate,
            source,
            dedupe: None,
            base: None,
        }
    }

    /// The source's side, where the target holds a base: pages found in
    /// `index` cross as their number there.
    pub fn with_index(mut self, index: Arc<PageIndex>) -> End {
        self.dedupe = Some(Dedupe::new(index));
        self
    }

    /// The target's side, holding the base the source's `P` frames name.
    pub fn with_base(mut self, base: Option<Arc<PageStore>>) -> End {
        self.base = base;
        self
    }

    /// Pages sent as their number in the base, so far (None without one).
    pub fn from_base(&self) -> Option<Arc<AtomicU64>> {
        self.dedupe.as_ref().map(|d| d.from_base.clone())
    }

    /// Writes base pages `first .. first + count` to CRIU.
    async fn deliver_base(&mut self, first: u32, count: u32) -> Result<(), TunnelError> {
        let none = |why: String| TunnelError::NoBasePages { first, count, why };
        let base = self.base.clone().ok_or_else(|| none("no base arrived".into()))?;
        let pages = base.read(first, count).map_err(|e| none(e.to_string()))?;
        self.tcp.write_all(&pages).await.map_err(|e| TunnelError::Local(e.to_string()))?;
        self.delivered += pages.len() as u64;
        Ok(())
    }

    /// The source's side gives the fill up while CRIU's page server still
    /// serves. The page server takes an end of stream between requests for
    /// a *finished* transfer (`criu/page-xfer.c`, `page_server_serve`):
    /// CRIU would end its dump and kill the container it dumped, whose
    /// memory the target lacks. So the server is first sent a command it
    /// does not know: it fails the transfer, and CRIU lets the container
    /// run again. Waits (a few seconds at most) for CRIU to close.
    pub async fn fail_page_server(&mut self) {
        if self.local_closed {
            return;
        }
        let poison = poison(self.delivered);
        if let Err(e) = self.tcp.write_all(&poison).await {
            tracing::warn!("telling CRIU's page server the transfer failed: {e}");
            return;
        }
        let _ = self.tcp.flush().await;
        let mut buf = vec![0u8; 64 << 10];
        let drained = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = self.tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("CRIU's page server did not close within 5 s of a failed transfer");
        }
        self.local_closed = true;
    }

    fn finished(&self) -> bool {
        self.local_closed && self.peer_closed && self.outbox.is_empty()
    }

    /// Runs one leg over `send`/`recv` until the fill is over or the leg
    /// fails. The TCP connection outlives a failed leg, whatever happens.
    pub async fn run_leg(&mut self, send: &mut quinn::SendStream, recv: quinn::RecvStream) -> LegEnd {
        match self.leg(send, recv).await {
            Ok(()) => LegEnd::Finished,
            Err(e @ TunnelError::Link(_)) => LegEnd::Lost(e),
            Err(e) => LegEnd::Failed(e),
        }
    }

    async fn leg(&mut self, send: &mut quinn::SendStream, mut recv: quinn::RecvStream) -> Result<(), TunnelError> {
        let link = |e: quinn::WriteError| TunnelError::Link(e.to_string());
        let local = |e: std::io::Error| TunnelError::Local(e.to_string());
        send.write_all(&Frame::Hello(self.delivered).encode()).await.map_err(link)?;
        let Some(Frame::Hello(peer_has)) = Frame::read(&mut recv).await? else { return Err(TunnelError::NoHello) };
        self.outbox.ack(peer_has)?;
        for chunk in self.outbox.pending(MAX_DATA) {
            send.write_all(&Frame::Data(chunk).encode()).await.map_err(link)?;
        }
        if self.local_closed {
            send.write_all(&Frame::End.encode()).await.map_err(link)?;
        }
        // Frames arrive through a task of their own: reading a frame is
        // not cancel-safe, and the loop below must wait on CRIU and the
        // peer at once.
        let (tx, mut frames) = mpsc::channel::<Result<Frame, TunnelError>>(16);
        let reader = tokio::spawn(async move {
            loop {
                let f = match Frame::read(&mut recv).await {
                    Ok(Some(f)) => Ok(f),
                    Ok(None) => Err(TunnelError::Link("the peer ended the leg".into())),
                    Err(e) => Err(e),
                };
                let stop = f.is_err();
                if tx.send(f).await.is_err() || stop {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(reader);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut acked = self.delivered;
        let mut tick = tokio::time::interval(ACK_EVERY);
        let mut bucket = (self.rate > 0).then(|| (tokio::time::Instant::now(), crate::transfer::Bucket::new(self.rate, Duration::ZERO)));
        while !self.finished() {
            let may_read = !self.local_closed && self.outbox.len() < OUTBOX_CAP;
            tokio::select! {
                r = self.tcp.read(&mut buf), if may_read => {
                    let n = r.map_err(local)?;
                    if n == 0 {
                        if self.source && !self.peer_closed {
                            return Err(TunnelError::Local("CRIU's page server closed before the target had every page".into()));
                        }
                        self.local_closed = true;
                        send.write_all(&Frame::End.encode()).await.map_err(link)?;
                        continue;
                    }
                    self.read.fetch_add(n as u64, Ordering::Relaxed);
                    self.outbox.push(&buf[..n]);
                    let wire: Vec<u8> = match &mut self.dedupe {
                        Some(d) => d.frames(&buf[..n]).iter().flat_map(Frame::encode).collect(),
                        None => Frame::Data(buf[..n].to_vec()).encode(),
                    };
                    if let Some((t0, b)) = &mut bucket {
                        let wait = b.take(wire.len() as u64, t0.elapsed());
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    send.write_all(&wire).await.map_err(link)?;
                }
                f = frames.recv() => {
                    match f.unwrap_or_else(|| Err(TunnelError::Link("the leg's reader stopped".into())))? {
                        Frame::Data(d) => {
                            self.tcp.write_all(&d).await.map_err(local)?;
                            self.delivered += d.len() as u64;
                        }
                        // Only a source sends them, and only one with a base.
                        Frame::Pages { first, count } if !self.source => self.deliver_base(first, count).await?,
                        Frame::Pages { .. } => return Err(TunnelError::UnknownFrame(b'P')),
                        Frame::Ack(n) => self.outbox.ack(n)?,
                        Frame::End => {
                            self.peer_closed = true;
                            // Confirm all first: the peer ends when nothing is owed.
                            send.write_all(&Frame::Ack(self.delivered).encode()).await.map_err(link)?;
                            acked = self.delivered;
                            let _ = self.tcp.shutdown().await;
                        }
                        Frame::Hello(_) => return Err(TunnelError::NoHello),
                    }
                }
                _ = tick.tick() => {
                    if acked != self.delivered {
                        send.write_all(&Frame::Ack(self.delivered).encode()).await.map_err(link)?;
                        acked = self.delivered;
                    }
                }
            }
        }
        let _ = send.write_all(&Frame::Ack(self.delivered).encode()).await;
        let _ = send.finish();
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The target's open tunnels, by migration: a `Request::Pages` stream from
/// the migration's source is handed to the tunnel waiting for it.
#[derive(Default)]
pub struct Tunnels {
    open: Mutex<HashMap<MigrationId, Waiting>>,
}

/// A tunnel waiting for legs: its source, where its legs go, and the token
/// cancelled when the source gives the move up.
type Waiting = (String, mpsc::Sender<Leg>, CancellationToken);

/// One leg's streams.
pub type Leg = (quinn::SendStream, quinn::RecvStream);
/// Legs for one tunnel, as the source opens them.
pub type Legs = mpsc::Receiver<Leg>;

impl Tunnels {
    /// The target opens the tunnel of migration `id`, from `source` only.
    /// The token is cancelled when the source gives the move up.
    pub fn open(&self, id: MigrationId, source: &str) -> (Legs, CancellationToken) {
        let (tx, rx) = mpsc::channel(4);
        let given_up = CancellationToken::new();
        self.open.lock().unwrap().insert(id, (source.to_string(), tx, given_up.clone()));
        (rx, given_up)
    }

    /// The source `peer` gave migration `id` up (its `Resolve` says
    /// abort): the tunnel waiting for its legs ends. Whether one was open.
    pub fn give_up(&self, id: MigrationId, peer: &str) -> bool {
        match self.open.lock().unwrap().get(&id) {
            Some((source, _, given_up)) if source == peer => {
                given_up.cancel();
                true
            }
            _ => false,
        }
    }

    pub fn close(&self, id: MigrationId) {
        self.open.lock().unwrap().remove(&id);
    }

    /// A `Request::Pages` stream: to its tunnel, if `peer` is its source.
    pub async fn attach(&self, id: MigrationId, peer: &str, send: quinn::SendStream, recv: quinn::RecvStream) -> anyhow::Result<()> {
        let tx = match self.open.lock().unwrap().get(&id) {
            Some((source, tx, _)) if source == peer => tx.clone(),
            Some(_) => anyhow::bail!("{peer} asked for the pages of migration {id}, which is not its"),
            None => anyhow::bail!("no post-copy migration {id} waits for its pages here"),
        };
        tx.send((send, recv)).await.map_err(|_| anyhow::anyhow!("migration {id} no longer waits for its pages"))
    }
}

/// What the target's tunnel tells the restore about its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// A leg was lost: the container must wait, paused.
    Lost,
    /// A leg runs again.
    Back,
    /// No leg can help any more: the fill will never complete.
    Failed(String),
}

/// The target's side: accepts `criu lazy-pages`' connection on
/// `listener`, then runs the legs the source opens until the fill is over
/// or the source gave the move up (`given_up`). `news` hears of the link;
/// `base` holds the pages `P` frames name.
pub async fn serve_target(
    listener: tokio::net::TcpListener,
    mut legs: Legs,
    given_up: CancellationToken,
    news: mpsc::UnboundedSender<News>,
    base: Option<Arc<PageStore>>,
) -> Result<u64, TunnelError> {
    let (tcp, _) = listener.accept().await.map_err(|e| TunnelError::Local(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut end = End::new(tcp, 0, false).with_base(base);
    let mut was_lost = false;
    loop {
        let next = tokio::select! {
            l = legs.recv() => l,
            () = given_up.cancelled() => {
                let _ = news.send(News::Failed(TunnelError::GaveUp.to_string()));
                // As after a failure: the daemon's connection stays open
                // until the migration ends.
                while legs.recv().await.is_some() {}
                return Err(TunnelError::GaveUp);
            }
        };
        let Some((mut send, recv)) = next else { break };
        if was_lost {
            let _ = news.send(News::Back);
        }
        match end.run_leg(&mut send, recv).await {
            LegEnd::Finished => return Ok(end.delivered),
            // The daemon closes its end only once it has every page: a
            // last frame lost with the link then changes nothing.
            LegEnd::Lost(_) if end.local_closed => return Ok(end.delivered),
            LegEnd::Lost(e) => {
                tracing::warn!("the page tunnel lost its leg: {e}; waiting for the source to open another");
                was_lost = true;
                let _ = news.send(News::Lost);
            }
            LegEnd::Failed(e) => {
                // The daemon's connection stays open, its faults waiting
                // rather than reading zeros, until the migration ends and
                // closes the tunnel (`Tunnels::close`).
                let _ = news.send(News::Failed(e.to_string()));
                while legs.recv().await.is_some() {}
                drop(end);
                return Err(e);
            }
        }
    }
    Err(TunnelError::Link("the migration ended before its memory was whole".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_resends_only_what_the_peer_lacks() {
        let mut o = Outbox::default();
        o.push(b"hello ");
        o.push(b"world");
        assert_eq!(o.end(), 11);
        o.ack(6).unwrap();
        assert_eq!(o.pending(3).concat(), b"world");
        assert_eq!(o.pending(3).len(), 2);
        assert_eq!(o.ack(12), Err(TunnelError::AckBeyondEnd { got: 12, end: 11 }));
        assert_eq!(o.ack(5), Err(TunnelError::AckBackwards { got: 5, base: 6 }));
        o.ack(11).unwrap();
        assert!(o.is_empty() && o.pending(3).is_empty());
        o.push(b"!");
        assert_eq!(o.end(), 12);
    }

    #[test]
    fn the_poison_lands_on_a_request_boundary_with_an_unknown_command() {
        let p = poison(64);
        assert_eq!(p.len(), 32);
        assert_eq!(u32::from_le_bytes(p[..4].try_into().unwrap()), UNKNOWN_COMMAND);
        // After 10 bytes of a request: its other 22, then the poison.
        let p = poison(10);
        assert_eq!(p.len(), 22 + 32);
        assert_eq!(u32::from_le_bytes(p[22..26].try_into().unwrap()), UNKNOWN_COMMAND);
        assert!(![1, 2, 3, 4, 5, 6, 7, 0x1023, 0x1024].contains(&(UNKNOWN_COMMAND & 0xffff)));
    }

    #[tokio::test]
    async fn frames_round_trip_and_bounds_hold() {
        let frames = [Frame::Hello(7), Frame::Data(vec![1, 2, 3]), Frame::Pages { first: 9, count: 2 }, Frame::Ack(u64::MAX), Frame::End];
        let bytes: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut r = &bytes[..];
        for f in frames {
            assert_eq!(Frame::read(&mut r).await.unwrap(), Some(f));
        }
        assert_eq!(Frame::read(&mut r).await.unwrap(), None);
        let big = [&[b'D'][..], &((MAX_DATA + 1) as u32).to_be_bytes()].concat();
        assert_eq!(Frame::read(&mut &big[..]).await.unwrap_err(), TunnelError::TooLarge(MAX_DATA + 1));
        assert_eq!(Frame::read(&mut &b"Z"[..]).await.unwrap_err(), TunnelError::UnknownFrame(b'Z'));
        assert!(matches!(Frame::read(&mut &b"A\0\0"[..]).await.unwrap_err(), TunnelError::Link(_)));
    }

    /// A page-server reply header: `cmd`, `pages`, then address and process.
    fn header(cmd: u32, pages: u64) -> Vec<u8> {
        let mut h = cmd.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&pages.to_le_bytes());
        h.extend_from_slice(&0x7f00_0000_0000u64.to_le_bytes());
        h.extend_from_slice(&(1u64 << 8).to_le_bytes());
        h
    }

    fn pieces(stream: &[u8], chunk: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut r = Replies::default();
        let (mut all, mut pages) = (Vec::new(), Vec::new());
        for c in stream.chunks(chunk) {
            r.feed(c, &mut |p| match p {
                Piece::Raw(b) => all.extend_from_slice(b),
                Piece::Page(b) => {
                    assert_eq!(b.len(), PAGE);
                    all.extend_from_slice(b);
                    pages.push(b.to_vec());
                }
            });
        }
        (all, pages)
    }

    #[test]
    fn replies_are_cut_into_their_pages_however_they_are_read() {
        use crate::pages::tests::page;
        let stream = [
            header(ADD_F_PRESENT, 3),
            page(1),
            page(2),
            page(3),
            header(ADD_F_PRESENT, 1),
            page(4),
            // The status that answers a close: passed on, not a header.
            0u32.to_le_bytes().to_vec(),
        ]
        .concat();
        for chunk in [1, 7, 32, 4095, 4096, 5000, stream.len()] {
            let (all, pages) = pieces(&stream, chunk);
            assert_eq!(all, stream, "chunk {chunk}");
            assert_eq!(pages, [page(1), page(2), page(3), page(4)], "chunk {chunk}");
        }
        // A reply it does not know: everything after it passes on whole.
        let odd = [header(ADD_F_PRESENT, 1), page(1), header(0x7, 1), page(2), header(ADD_F_PRESENT, 1), page(3)].concat();
        let (all, pages) = pieces(&odd, 100);
        assert_eq!((all, pages), (odd.clone(), vec![page(1)]));
        // Nor does it trust a reply claiming too many pages.
        let huge = [header(ADD_F_PRESENT, MAX_REPLY_PAGES + 1), page(1)].concat();
        assert!(pieces(&huge, 4096).1.is_empty());
    }

    #[tokio::test]
    async fn on_a_base_pages_it_holds_cross_as_numbers_and_come_out_whole() {
        use crate::pages::tests::{page, tar};
        use crate::pages::PageOffsets;
        let base = tar(&[("checkpoint/pages-1.img", [page(1), page(2), page(3), page(4)].concat())]);
        let (mut index, mut offsets) = (PageIndex::default(), PageOffsets::default());
        index.add(&base);
        offsets.add(&base);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.tar"), &base).unwrap();
        let store = PageStore::open(&dir.path().join("base.tar"), offsets.finish()).unwrap();

        // Pages 1 and 2 of the base in a row, one it lacks, then page 4.
        let stream = [header(ADD_F_PRESENT, 4), page(2), page(3), page(9), page(4), 0u32.to_le_bytes().to_vec()].concat();
        let index = Arc::new(index);
        let mut d = Dedupe::new(index.clone());
        let frames = d.frames(&stream);
        let refs: Vec<&Frame> = frames.iter().filter(|f| matches!(f, Frame::Pages { .. })).collect();
        assert_eq!(refs, [&Frame::Pages { first: 1, count: 2 }, &Frame::Pages { first: 3, count: 1 }]);
        assert_eq!(d.from_base.load(Ordering::Relaxed), 3);
        let wire: usize = frames.iter().map(|f| f.encode().len()).sum();
        assert!(wire < 2 * PAGE, "{wire} bytes on the wire for 4 pages");

        // However it is read, the target rebuilds it byte for byte.
        let mut d = Dedupe::new(index);
        let frames: Vec<Frame> = stream.chunks(3000).flat_map(|c| d.frames(c)).collect();
        let mut rebuilt = Vec::new();
        for f in frames {
            match f {
                Frame::Data(b) => rebuilt.extend_from_slice(&b),
                Frame::Pages { first, count } => {
                    let mut buf = vec![0u8; PAGE];
                    store
                        .copy(first, count, &mut buf, &mut |b| {
                            rebuilt.extend_from_slice(b);
                            Ok(())
                        })
                        .unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(rebuilt, stream);
        // And the frame's bounds hold.
        let zero = Frame::Pages { first: 0, count: 0 }.encode();
        assert_eq!(Frame::read(&mut &zero[..]).await.unwrap_err(), TunnelError::BadPageCount(0));
        let max = Frame::Pages { first: 5, count: MAX_REF_PAGES }.encode();
        assert_eq!(Frame::read(&mut &max[..]).await.unwrap(), Some(Frame::Pages { first: 5, count: MAX_REF_PAGES }));
    }
}
