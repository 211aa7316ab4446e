//! The switchover (`proto/src/source_state.rs`, "The switchover") with the
//! link between the two agents cut at its most delicate points: two real
//! agents in one process, real QUIC with mutual TLS on loopback, a fake
//! container engine (`common/mod.rs`, shared with migration_logic.rs).
//!
//! Why a relay: the protocol's promise (exactly one copy runs, through lost
//! messages and a cut link) rests on what QUIC does when packets stop
//! arriving: retransmits, idle timeouts, handshakes that fail and later
//! succeed. A fault that drops a message inside the agent would not
//! exercise any of that. So the source is told the target lives at a UDP
//! relay (a tokio `UdpSocket` pair) that forwards datagrams both ways and
//! can drop every one of them, in both directions, until healed: the
//! agents see a real network partition. Only the agent-to-agent path goes
//! through it; the test, as coordinator, talks to both agents directly.
//!
//! The cut lands at a precise point: in the target's restore (a hook in
//! the fake's `restore_import`), so the target's `Restored` is lost; or
//! once the source recorded the commit (the `AfterRestored` stall of
//! `faults.rs`, seen by its flag file), so its `Commit` is lost. A cut
//! shorter than QUIC's idle timeout (10 s, transport/src/endpoint.rs) is
//! invisible, retransmission hides it; the timeouts can only be stretched
//! (`TERN_TIMEOUT_SCALE` >= 1), not shortened, so these tests wait out the
//! real timeouts.
//!
//! Throughout each test a watcher samples both fakes every 2 ms and fails
//! the test if the container ever runs on both hosts at once.

#[allow(dead_code)]
mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_agent::config::{Faults, StallPoint};
use tern_proto::*;
use tokio::net::UdpSocket;

const NAME: &str = "web";
const ID: &str = "id-web";

// ---- The relay ----

/// A UDP relay between the source agent and the target agent: the source
/// talks to `addr`, the relay to the target from a socket of its own.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Datagrams dropped while cut.
    dropped: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Arc<Relay> {
        let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(target).await.unwrap();
        let relay = Arc::new(Relay { addr: front.local_addr().unwrap(), cut: Arc::default(), dropped: Arc::default() });
        let (cut, dropped) = (relay.cut.clone(), relay.dropped.clone());
        tokio::spawn(async move {
            // The source agent's one endpoint: every connection it opens
            // (the conversation, Resolve) comes from this address.
            let mut source: Option<SocketAddr> = None;
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { continue };
                        source.get_or_insert(from);
                        if cut.load(Ordering::SeqCst) {
                            dropped.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    r = back.recv(&mut down) => {
                        // Errors (an ICMP unreachable echoed on the connected socket) are no datagram.
                        let Ok(n) = r else { continue };
                        match source {
                            _ if cut.load(Ordering::SeqCst) => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(to) => {
                                let _ = front.send_to(&down[..n], to).await;
                            }
                            None => {}
                        }
                    }
                }
            }
        });
        relay
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Cuts now, heals after `d` (never, for `None`).
    fn cut_for(self: &Arc<Self>, d: Option<Duration>) {
        self.cut();
        if let Some(d) = d {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                me.heal();
            });
        }
    }
}

// ---- The watcher: never two copies ----

/// Samples both engines every 2 ms for as long as it lives.
struct Watch {
    stop: Arc<AtomicBool>,
    /// What was seen when both ran, if ever.
    both: Arc<Mutex<Option<String>>>,
    samples: Arc<AtomicU64>,
}

impl Watch {
    fn start(a: &Arc<FakeEngine>, b: &Arc<FakeEngine>) -> Watch {
        let w = Watch { stop: Arc::default(), both: Arc::default(), samples: Arc::default() };
        let (a, b, stop, both, samples) = (a.clone(), b.clone(), w.stop.clone(), w.both.clone(), w.samples.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                // One lock after the other: a copy that moves between the two
                // reads shows as none, never as two.
                let (on_a, on_b) = (a.running(NAME), b.running(NAME));
                if on_a && on_b {
                    both.lock().unwrap().get_or_insert_with(|| format!("running on both hosts {:?} into the test", t0.elapsed()));
                }
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        w
    }

    /// Never two copies so far, and exactly one now.
    fn check(&self, a: &FakeEngine, b: &FakeEngine) {
        assert_eq!(*self.both.lock().unwrap(), None::<String>);
        assert!(self.samples.load(Ordering::Relaxed) > 100, "the watcher ran");
        assert_eq!(a.running(NAME) as u8 + b.running(NAME) as u8, 1, "a: {:?}, b: {:?}", a.state_of(NAME), b.state_of(NAME));
    }

    /// Never two copies so far.
    fn never_two(&self) {
        assert_eq!(*self.both.lock().unwrap(), None::<String>);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---- Two agents, the relay between them ----

/// Starts agents `a` (source, with `a_faults`) and `b` (target) on
/// loopback, each with its recovery task as main.rs starts it, and the
/// relay in front of `b`: the address `a` is given for `b`.
async fn cluster(a: Arc<FakeEngine>, b: Arc<FakeEngine>, a_faults: Faults) -> (Cluster, Arc<Relay>) {
    let mut c = ClusterBuilder::new(a, b).source_faults(a_faults).with_recovery().start().await;
    let relay = Relay::start(c.addrs["b"]).await;
    c.target = relay.addr;
    // Past QUIC's idle timeout and the source's settle window.
    c.patience = Duration::from_secs(120);
    (c, relay)
}

/// Asks `a` to move `web` to `b`, through the relay.
async fn migrate(c: &Cluster) -> MigrationReport {
    let options = MigrateOptions { lazy_restore: false, ..options(Mode::StopAndCopy) };
    c.migrate_with(NAME, options, None).await.1
}

/// The source's journal entries still unsettled.
fn journal(c: &Cluster) -> usize {
    std::fs::read_dir(c.state_dir("a").join("journal"))
        .map(|d| d.flatten().filter(|f| f.path().extension().is_some_and(|e| e == "json")).count())
        .unwrap_or(0)
}

/// What `b` answers `a` (with a's certificate, directly) to a Resolve.
async fn resolve_as_source(c: &Cluster, verdict: Verdict) -> Response {
    let s = c.session_as("a", "b").await.unwrap();
    let req = ResolveRequest { id: 7, container: NAME.into(), container_id: ID.into(), verdict };
    s.request(&Request::Resolve(req)).await.unwrap()
}

/// Waits up to `limit` for `cond`, polling.
async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The source runs `web` (one page of memory); both hosts have its image.
fn engines() -> (Arc<FakeEngine>, Arc<FakeEngine>) {
    let (a, b) = (FakeEngine::new(1), FakeEngine::new(1));
    a.add(NAME, "203.0.113.5");
    b.state.lock().unwrap().images.insert(IMG.into());
    (a, b)
}

/// The link breaks while the target restores, so its `Restored` is lost,
/// and comes back after QUIC gave up on the conversation (10 s) but
/// within the source's 30 s of trying to settle: the source's `Resolve`
/// gets through, the target drops its tentative copy, the source runs its
/// own again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_lost_and_link_back_within_the_settle_window_rolls_back() {
    let (a, b) = engines();
    let (c, relay) = cluster(a.clone(), b.clone(), Faults::default()).await;
    let watch = Watch::start(&a, &b);
    let cut = relay.clone();
    b.on_restore(move || cut.cut_for(Some(Duration::from_secs(15))));
    let t0 = Instant::now();
    let r = migrate(&c).await;
    assert!(matches!(&r.outcome, Outcome::RolledBack { failure } if failure.phase == Phase::Restore), "{r:#?}");
    assert!(relay.dropped.load(Ordering::Relaxed) > 0, "the cut dropped something");
    assert!(t0.elapsed() > Duration::from_secs(15), "settled only once healed: {:?}", t0.elapsed());
    watch.check(&a, &b);
    assert_eq!(a.state_of(NAME).as_deref(), Some("running"), "back on the source");
    assert_eq!(b.state_of(NAME), None, "nothing left on the target");
    assert!(!b.folder(ID).exists(), "{} left behind", b.folder(ID).display());
    assert_eq!(journal(&c), 0, "settled: no journal entry left");
}

/// The link breaks while the target restores and stays down past the
/// source's settle window: the migration ends undecided, the container
/// checkpointed on the source, at most the target's tentative copy
/// running. Once the link is back, the source's recovery settles it
/// (abort, as no commit was recorded): it runs on the source again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_lost_and_link_down_past_the_settle_window_is_undecided_then_recovered() {
    let (a, b) = engines();
    let (c, relay) = cluster(a.clone(), b.clone(), Faults::default()).await;
    let watch = Watch::start(&a, &b);
    let cut = relay.clone();
    b.on_restore(move || cut.cut_for(None));
    let r = migrate(&c).await;
    assert!(matches!(&r.outcome, Outcome::Undecided { failure, .. } if failure.phase == Phase::Restore), "{r:#?}");
    assert!(relay.is_cut());
    watch.never_two();
    assert_eq!(a.state_of(NAME).as_deref(), Some("exited"), "checkpointed on the source, not restored");
    assert_eq!(b.state_of(NAME).as_deref(), Some("running"), "the target's copy runs on, alone");
    assert!(b.tentative(ID), "and is tentative");
    assert_eq!(journal(&c), 1, "left for recovery");
    // Recovery tries at once, and while cut nothing changes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((a.state_of(NAME).as_deref(), b.running(NAME)), (Some("exited"), true));
    relay.heal();
    wait_for(Duration::from_secs(30), "recovery settles", || a.running(NAME) && b.state_of(NAME).is_none() && journal(&c) == 0).await;
    watch.check(&a, &b);
    assert!(!b.folder(ID).exists(), "{} left behind", b.folder(ID).display());
}

/// The link breaks once the source recorded the commit, so its `Commit` is
/// lost: the migration completes (the container is the target's), the
/// target's copy runs on, tentative until the link is back; then the
/// source's recovery tells it `Commit`, and its marker goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_lost_completes_and_recovery_commits_once_healed() {
    let (a, b) = engines();
    let stall = Faults { stall_at: Some(StallPoint::AfterRestored), stall_ms: Some(500), ..Default::default() };
    let (c, relay) = cluster(a.clone(), b.clone(), stall).await;
    let watch = Watch::start(&a, &b);
    // The source shows its stall with a flag file: cut then, for longer
    // than QUIC's idle timeout, so the Commit is not merely retransmitted.
    let flag = c.state_dir("a").join(tern_agent::faults::STALL_FLAG);
    let cut = relay.clone();
    let cutter = tokio::spawn(async move {
        while !flag.exists() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cut.cut_for(Some(Duration::from_secs(15)));
    });
    let r = migrate(&c).await;
    cutter.await.unwrap();
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(r.warnings.iter().any(|w| w.contains("did not confirm the commit")), "{:?}", r.warnings);
    assert!(relay.is_cut(), "the report came before the link was back");
    watch.never_two();
    assert_eq!(a.state_of(NAME), None, "the source copy is removed");
    assert!(b.running(NAME), "the target's copy runs");
    assert!(b.tentative(ID), "still tentative: it never heard the commit");
    assert_eq!(journal(&c), 1, "left for recovery, commit recorded");
    wait_for(Duration::from_secs(30), "recovery commits", || !b.tentative(ID) && journal(&c) == 0).await;
    watch.check(&a, &b);
    assert!(b.running(NAME));
    // Committed: not even an abort from its source removes it now.
    assert_eq!(resolve_as_source(&c, Verdict::Abort).await, Response::Resolved(Resolution::Kept));
    assert!(b.running(NAME));
    watch.check(&a, &b);
}
