//! The bandwidth cap on a source's outgoing migration traffic
//! (`transfer/pace.rs`), over real loopback QUIC with the fake engine of
//! `common/mod.rs`: every stream of a migration goes through it, a request
//! may lower the agent's cap but never raise it, and without a cap nothing
//! waits.
//!
//! Times are checked from below only (a token bucket of `rate` holding at
//! most `burst` lets through no more than `burst + rate × T` in any time
//! `T`): a busy machine makes transfers slower, never faster.

#[allow(dead_code)]
mod common;

use common::*;
use std::sync::Arc;
use std::time::Instant;
use tern_agent::transfer::BURST;
use tern_proto::*;

const MIB: u64 = 1 << 20;
/// 8 Mbit/s: well below what a debug build moves over loopback.
const RATE: u64 = 1_000_000;

/// The least time `bytes` take through a full bucket of `rate`, in ms.
fn least_ms(bytes: u64, rate: u64) -> u64 {
    let burst = (rate as f64 * BURST.as_secs_f64()) as u64;
    bytes.saturating_sub(burst) * 1000 / rate
}

fn phase_ms(r: &MigrationReport, phase: Phase) -> u64 {
    r.phases.iter().filter(|p| p.phase == phase).map(|p| p.ms).sum()
}

#[tokio::test]
async fn the_agents_cap_paces_the_image_and_the_frozen_checkpoint_and_a_request_cannot_raise_it() {
    // 4 MiB of memory; b lacks the image, so it is shipped too.
    let (a, b) = (FakeEngine::new(1024), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = ClusterBuilder::new(a.clone(), b.clone()).tune_source(|cfg| cfg.limits.bandwidth = RATE).start().await;
    let asked = MigrateOptions { bandwidth: 125_000_000, ..options(Mode::StopAndCopy) }; // 1 Gbit/s
    let t0 = Instant::now();
    let (_, r) = c.migrate_with("web", asked, None).await;
    let took = t0.elapsed();
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(b.memory_of("web") == a.frozen(), "memory arrives intact");
    assert!(r.image_bytes > 0 && r.checkpoint_bytes >= 4 * MIB, "{r:#?}");
    assert_eq!(r.bandwidth, RATE, "the request asked for more than the agent allows: the agent's cap holds");
    assert!(r.throttled_ms > 0, "{r:#?}");
    // Uncompressed (options() sends raw): the streams carry at least the archives.
    let sent = r.image_bytes + r.checkpoint_bytes;
    assert!(r.total_ms >= least_ms(sent, RATE), "{} ms for {sent} bytes at {RATE} B/s", r.total_ms);
    let frozen = r.downtime_ms.unwrap();
    assert!(frozen >= least_ms(r.checkpoint_bytes, RATE), "frozen {frozen} ms for a {} byte checkpoint", r.checkpoint_bytes);
    assert!(phase_ms(&r, Phase::Checkpoint) >= least_ms(r.checkpoint_bytes, RATE), "{:?}", r.phases);
    eprintln!(
        "capped at 8 Mbit/s: {sent} bytes, {} ms in all ({:.2} s by the test's clock), downtime {frozen} ms, waited {} ms for the cap; least {} ms",
        r.total_ms,
        took.as_secs_f64(),
        r.throttled_ms,
        least_ms(sent, RATE)
    );
}

#[tokio::test]
async fn pre_copy_rounds_go_through_a_cap_the_request_asked_for() {
    // No cap in the agent's config: the request's holds. 3 MiB, round 2
    // holds the 40 pages written since round 1.
    let a = Arc::new(FakeEngine::with(768, 40));
    let b = FakeEngine::new(0);
    a.add("db", "203.0.113.6");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Default::default()).await;
    let (_, r) = c.migrate_with("db", MigrateOptions { bandwidth: RATE, ..options(Mode::PreCopy) }, None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(b.memory_of("db") == a.frozen(), "the target's memory differs from the source's at the freeze");
    assert_eq!(r.bandwidth, RATE);
    let first = &r.rounds[0];
    assert!(first.bytes >= 3 * MIB, "{first:?}");
    assert!(first.transfer_ms >= least_ms(first.bytes, RATE), "round 1: {first:?}");
    // The policy estimated the final dump at the cap, not the loopback's
    // rate: 40 pages at 8 Mbit/s still fit 300 ms.
    assert!(r.stop_reason.as_deref().unwrap_or("").contains("fits the downtime target"), "{:?}", r.stop_reason);
    eprintln!("pre-copy capped at 8 Mbit/s: round 1 {} bytes in {} ms (least {} ms)", first.bytes, first.transfer_ms, least_ms(first.bytes, RATE));
}

#[tokio::test]
async fn without_a_cap_nothing_waits() {
    let (a, b) = (FakeEngine::new(1024), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Default::default()).await;
    let t0 = Instant::now();
    let (_, r) = c.migrate_with("web", options(Mode::StopAndCopy), None).await;
    let took = t0.elapsed();
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!((r.bandwidth, r.throttled_ms), (0, 0), "{r:#?}");
    let sent = r.image_bytes + r.checkpoint_bytes;
    eprintln!(
        "uncapped: {sent} bytes, {} ms in all ({:.2} s by the test's clock), downtime {} ms; 8 Mbit/s would need at least {} ms",
        r.total_ms,
        took.as_secs_f64(),
        r.downtime_ms.unwrap_or(0),
        least_ms(sent, RATE)
    );
}
