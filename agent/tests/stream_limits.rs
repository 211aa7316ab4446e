//! Deadlines and size limits of data streams, over real QUIC on loopback:
//! a sender whose peer stops reading fails instead of blocking (the source
//! is frozen meanwhile), and a receiver fails on a stream that stalls or
//! grows past what was announced.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_agent::transfer::{self, StreamLimits, TransferError};
use tern_proto::{DataHeader, DataKind};
use tokio::io::AsyncReadExt;

mod quic_pair;
use quic_pair::pair;

const HEADER: DataHeader = DataHeader { id: 1, kind: DataKind::Checkpoint };

#[tokio::test]
async fn a_sender_whose_peer_stops_reading_fails_within_the_deadline() {
    let (conn, theirs, _dir, _s, _c) = pair().await;
    // The peer takes the stream and never reads from it.
    let held = tokio::spawn(async move {
        let recv = theirs.accept_uni().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(recv);
    });
    transfer::set_send_stall(Duration::from_millis(1500));
    let done = AtomicU64::new(0);
    // Far more than the flow-control windows let go unread.
    let reader = tokio::io::repeat(7).take(1 << 30);
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), transfer::send(&conn, &HEADER, reader, &done, None, &transfer::Pace::unlimited()))
        .await
        .expect("the sender blocked");
    let err = r.err().expect("the send succeeded into a peer that reads nothing");
    assert!(matches!(err, TransferError::SendStalled(d) if d == Duration::from_millis(1500)), "{err}");
    assert_eq!(err.to_string(), "sending to the target failed: it took no data for 1.5 s");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    held.abort();
}

/// Sends `bytes` bytes on a new stream, then keeps it open (`finish`: ends it).
async fn send_some(conn: &quinn::Connection, bytes: usize, finish: bool) -> quinn::SendStream {
    let mut s = conn.open_uni().await.unwrap();
    tern_proto::frame::write_frame(&mut s, &HEADER).await.unwrap();
    // A file set of one file of `bytes` bytes, or its beginning.
    let entry = tern_proto::frame::encode(&tern_proto::fileset::FileEntry::File { name: "pages-1.img".into(), len: bytes as u64 }).unwrap();
    s.write_all(&entry).await.unwrap();
    s.write_all(&vec![3u8; bytes]).await.unwrap();
    if finish {
        let end = tern_proto::frame::encode(&tern_proto::fileset::FileEntry::End).unwrap();
        s.write_all(&end).await.unwrap();
        s.finish().unwrap();
    }
    s
}

#[tokio::test]
async fn a_receiver_fails_on_a_stalled_stream_and_on_one_too_large() {
    let (conn, theirs, dir, _s, _c) = pair().await;
    let done = Arc::new(AtomicU64::new(0));

    // Stalled: some bytes, then nothing (the stream stays open).
    let _open = send_some(&conn, 10_000, false).await;
    let mut recv = theirs.accept_uni().await.unwrap();
    transfer::accept_header(&mut recv).await.unwrap();
    let limits = StreamLimits { stall: Duration::from_millis(800), max_bytes: 1 << 30 };
    let started = Instant::now();
    let err = transfer::receive_fileset(recv, &dir.path().join("stalled"), done.clone(), limits).await.unwrap_err();
    assert!(matches!(err, TransferError::ReceiveStalled(_)), "{err}");
    assert_eq!(err.to_string(), "receiving from the source failed: no data arrived for 0.8 s");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Too large: 3 MiB where 1 MiB was allowed.
    let _s = send_some(&conn, 3 << 20, true).await;
    let mut recv = theirs.accept_uni().await.unwrap();
    transfer::accept_header(&mut recv).await.unwrap();
    let limits = StreamLimits { stall: Duration::from_secs(10), max_bytes: 1 << 20 };
    let err = transfer::receive_fileset(recv, &dir.path().join("large"), done.clone(), limits).await.unwrap_err();
    // Refused as soon as a file announces more than the stream may carry
    // (the file set's own limit), or at the stream's cap.
    let refused_early = err.to_string().contains("announces 3145728 bytes, above the limit of 1048576");
    assert!(refused_early || matches!(err, TransferError::TooLarge { limit } if limit == 1 << 20), "{err}");

    // Within both: received whole.
    let _s = send_some(&conn, 100_000, true).await;
    let mut recv = theirs.accept_uni().await.unwrap();
    transfer::accept_header(&mut recv).await.unwrap();
    let limits = StreamLimits { stall: Duration::from_secs(10), max_bytes: 1 << 20 };
    let (_, names) = transfer::receive_fileset(recv, &dir.path().join("fine"), done, limits).await.unwrap();
    assert_eq!(names, ["pages-1.img"]);
    assert_eq!(std::fs::metadata(dir.path().join("fine/pages-1.img")).unwrap().len(), 100_000);
}
