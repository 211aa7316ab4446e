//! The post-copy page tunnel (`tunnel.rs`) over real QUIC on loopback:
//! CRIU's byte streams cross intact and in order although their link dies
//! mid-stream, and neither CRIU connection sees an end before the fill is
//! over. The stand-ins for CRIU are plain TCP sockets: the target's
//! `criu lazy-pages` and the source's page server.

mod quic_pair;
use quic_pair::pair;
use std::time::Duration;
use tern_agent::tunnel::{serve_target, End, Leg, LegEnd, News, TunnelError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn pattern(n: usize, salt: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + salt) % 251) as u8).collect()
}

/// Both sides of the tunnel with their CRIU stand-ins connected.
struct Sides {
    /// The target's `criu lazy-pages`.
    daemon: TcpStream,
    /// The source's page server.
    page_server: TcpStream,
    /// The source's end of the tunnel.
    end: End,
    /// Where the target's tunnel takes its legs.
    legs: mpsc::Sender<Leg>,
    lost: mpsc::UnboundedReceiver<News>,
    given_up: CancellationToken,
    target: tokio::task::JoinHandle<Result<u64, TunnelError>>,
}

async fn sides() -> Sides {
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = port.local_addr().unwrap();
    let (legs, legs_rx) = mpsc::channel(4);
    let (lost_tx, lost) = mpsc::unbounded_channel();
    let given_up = CancellationToken::new();
    let target = tokio::spawn(serve_target(port, legs_rx, given_up.clone(), lost_tx, None));
    let daemon = TcpStream::connect(addr).await.unwrap();
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to_server = TcpStream::connect(server.local_addr().unwrap()).await.unwrap();
    let (page_server, _) = server.accept().await.unwrap();
    Sides { daemon, page_server, end: End::new(to_server, 0, true), legs, lost, given_up, target }
}

/// A leg's connection and endpoints, kept until the test is done with
/// them: dropped at once, they would cut the leg's last frames.
type Kept = (quinn::Connection, quinn::Connection, tempfile::TempDir, quinn::Endpoint, quinn::Endpoint);

/// Runs one leg on a fresh connection beside `work`, which ends the leg
/// by closing the connection (a cut) or by letting the fill finish.
async fn leg<F: std::future::Future<Output = ()>>(
    end: &mut End,
    legs: &mpsc::Sender<Leg>,
    work: impl FnOnce(quinn::Connection) -> F,
) -> (LegEnd, Kept) {
    let kept = pair().await;
    let (conn, theirs) = (kept.0.clone(), kept.1.clone());
    let source = async {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        end.run_leg(&mut send, recv).await
    };
    let handover = async {
        if let Ok(l) = theirs.accept_bi().await {
            legs.send(l).await.unwrap();
        }
    };
    let (ended, (), ()) = tokio::join!(source, handover, work(conn.clone()));
    (ended, kept)
}

#[tokio::test]
async fn pages_cross_intact_through_a_link_that_dies_mid_stream() {
    let Sides { mut daemon, page_server, mut end, legs, mut lost, target, .. } = sides().await;
    let (mut ps_read, mut ps_write) = page_server.into_split();
    let request = pattern(300 << 10, 1);
    let pages = pattern(8 << 20, 2);
    // The page server answers the request with every page, as CRIU does.
    let server = tokio::spawn({
        let (request, pages) = (request.clone(), pages.clone());
        async move {
            let mut got = vec![0u8; request.len()];
            ps_read.read_exact(&mut got).await.unwrap();
            assert_eq!(got, request, "the request crossed changed");
            ps_write.write_all(&pages).await.unwrap();
            (ps_read, ps_write)
        }
    });
    daemon.write_all(&request).await.unwrap();
    let mut got = vec![0u8; pages.len()];

    // Leg 1: cut once a part of the pages arrived; the rest waits.
    let (head, tail) = got.split_at_mut(1 << 20);
    let d = &mut daemon;
    let (first, _first) = leg(&mut end, &legs, |conn| async move {
        daemon_read(d, head).await;
        conn.close(0u32.into(), b"cut");
    })
    .await;
    assert!(matches!(first, LegEnd::Lost(TunnelError::Link(_))), "{first:?}");
    // The target learns it when the close reaches it, or at QUIC's idle
    // timeout (10 s) as on a cut link.
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), lost.recv()).await.unwrap(), Some(News::Lost));

    // Leg 2, on a new connection: the rest, then the daemon ends the fill
    // and the page server closes after it, as CRIU does.
    let (mut ps_read, ps_write) = server.await.unwrap();
    let (second, _second) = leg(&mut end, &legs, |_| async {
        daemon_read(&mut daemon, tail).await;
        daemon.shutdown().await.unwrap();
        let mut rest = Vec::new();
        ps_read.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the page server got {} stray bytes", rest.len());
        drop(ps_write);
    })
    .await;
    assert!(matches!(second, LegEnd::Finished), "{second:?}");
    assert!(got == pages, "the pages arrived changed");
    assert_eq!(lost.recv().await, Some(News::Back), "the target did not hear the link was back");
    let delivered = tokio::time::timeout(Duration::from_secs(5), target).await.unwrap().unwrap().unwrap();
    assert_eq!(delivered, pages.len() as u64);
    let mut eof = [0u8; 1];
    assert_eq!(daemon.read(&mut eof).await.unwrap(), 0, "the daemon's connection should end after the fill");
}

#[tokio::test]
async fn a_page_server_that_closes_first_fails_the_tunnel_and_the_daemon_never_sees_an_end() {
    let Sides { mut daemon, page_server, mut end, legs, mut lost, target, .. } = sides().await;
    let (ended, _kept) = leg(&mut end, &legs, |_| async move {
        // CRIU on the source dies: its socket closes before the daemon's.
        drop(page_server);
    })
    .await;
    assert!(matches!(&ended, LegEnd::Failed(TunnelError::Local(m)) if m.contains("before the target had every page")), "{ended:?}");
    drop(end);
    // The target's daemon gets neither bytes nor an end: its faults wait
    // (and the container is paused) until the move is settled.
    let mut b = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(500), daemon.read(&mut b)).await.is_err(), "the daemon's connection ended");
    assert_eq!(lost.recv().await, Some(News::Lost));
    assert!(!target.is_finished() || target.await.unwrap().is_err());
}

#[tokio::test]
async fn a_move_given_up_while_the_link_is_lost_fails_the_fill_and_the_daemon_never_sees_an_end() {
    let Sides { mut daemon, page_server, mut end, legs, mut lost, given_up, target } = sides().await;
    let (ended, _kept) = leg(&mut end, &legs, |c| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.close(0u32.into(), b"cut");
    })
    .await;
    assert!(matches!(ended, LegEnd::Lost(_)), "{ended:?}");
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), lost.recv()).await.unwrap(), Some(News::Lost));
    // The source's operator gives the move up; its CRIU lets its copy run.
    drop((end, page_server));
    given_up.cancel();
    assert!(matches!(lost.recv().await, Some(News::Failed(m)) if m.contains("given up")));
    // The restore stops waiting; the daemon's connection stays open, its
    // faults waiting, until the migration ends and closes the tunnel.
    let mut b = [0u8; 1];
    assert!(tokio::time::timeout(Duration::from_millis(300), daemon.read(&mut b)).await.is_err(), "the daemon's connection ended");
    drop(legs);
    assert_eq!(target.await.unwrap(), Err(TunnelError::GaveUp));
}

async fn daemon_read(daemon: &mut TcpStream, into: &mut [u8]) {
    tokio::time::timeout(Duration::from_secs(20), daemon.read_exact(into)).await.expect("the pages stopped").unwrap();
}
