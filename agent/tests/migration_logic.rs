//! The migration logic of two real agents talking real QUIC with mutual TLS
//! on loopback, with a fake container engine behind the `Engine` trait.
//! These run without root; the end-to-end tests in `tests/` do the same
//! with real Podman, runc and CRIU.
//!
//! The fake models what matters to migration: a container's memory (pages
//! that its "workload" dirties between dumps), pre-dumps chained through
//! `parent` links as CRIU's are, and archives that are real tars holding a
//! `checkpoint/pages-1.img`. The target rebuilds memory from what it
//! received (the chain of rounds, or the delta-encoded archive), and the
//! tests check it equals the source's memory at the freeze, byte for byte.
//! The fake and the cluster are in `common/mod.rs`, shared with
//! `switchover_relay.rs`.

#[allow(dead_code)]
mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tern_agent::config::{Faults, NetworkConfig};
use tern_proto::facts::ContainerInfo;
use tern_proto::frame::{read_frame, write_frame};
use tern_proto::policy::{OnTimeout, PolicyConfig};
use tern_proto::*;

#[tokio::test]
async fn stop_and_copy_moves_the_container_and_ships_the_image() {
    let (a, b) = (FakeEngine::new(768), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (events, r) = c.migrate("web", None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(a.state_of("web"), None, "the source copy is removed");
    assert_eq!(b.state_of("web").as_deref(), Some("running"));
    assert!(b.memory_of("web") == a.frozen(), "memory arrives intact");
    assert!(b.called("image_load"), "b lacked the image, so it was shipped");
    assert!(r.image_bytes > 0);
    assert!(r.checkpoint_bytes > 768 * PAGE as u64);
    assert!(r.bytes_on_wire >= r.checkpoint_bytes + r.image_bytes, "{r:#?}");
    assert!(r.downtime_ms.is_some() && r.downtime_ms.unwrap() <= r.total_ms);
    assert!(r.rounds.is_empty() && r.stop_reason.is_none());
    let phases: Vec<Phase> = r.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [Phase::Prepare, Phase::Image, Phase::Checkpoint, Phase::Verify, Phase::Restore, Phase::Cleanup]);
    assert!(events.iter().any(|e| e.phase == Phase::Checkpoint));
    b.assert_tidy("id-web");
}

#[tokio::test]
async fn pre_copy_ships_shrinking_rounds_and_the_target_rebuilds_memory_exactly() {
    // 2048 pages, the workload writes 40 between dumps: round 1 holds all,
    // round 2 only the 40 written since, which fit the downtime target.
    let a = Arc::new(FakeEngine::with(2048, 40));
    let b = FakeEngine::new(0);
    a.add("db", "203.0.113.6");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (events, r) = c.migrate_with("db", options(Mode::PreCopy), None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(r.rounds.len(), 2, "{:#?}", r.rounds);
    // The fake writes no CRIU statistics: pages are counted from the files.
    assert_eq!((r.rounds[0].pages, r.rounds[1].pages), (2048, 40), "{:#?}", r.rounds);
    assert!(r.rounds[0].bytes > 2048 * PAGE as u64);
    assert!(r.rounds[1].bytes < 41 * PAGE as u64, "{:#?}", r.rounds);
    assert!(r.rounds[1].dirty_pages_per_s > 0);
    assert!(b.memory_of("db") == a.frozen(), "the target's memory differs from the source's at the freeze");
    assert!(r.stop_reason.as_deref().unwrap().contains("fits the downtime target"), "{:?}", r.stop_reason);
    // The final archive holds only what was written since round 2.
    assert!(r.checkpoint_bytes < 50 * PAGE as u64, "{}", r.checkpoint_bytes);
    assert!(a.called("checkpoint with_previous=true leave_running=false"));
    assert_eq!(a.count("pre_dump"), 2);
    let phases: Vec<Phase> = r.phases.iter().map(|p| p.phase).collect();
    assert_eq!(phases, [Phase::Prepare, Phase::PreCopy, Phase::Checkpoint, Phase::Verify, Phase::Restore, Phase::Cleanup]);
    assert!(events.iter().any(|e| e.phase == Phase::PreCopy && e.note.contains("round 2")));
    assert_eq!(a.state_of("db"), None);
    assert_eq!(b.state_of("db").as_deref(), Some("running"));
    b.assert_tidy("id-db");
}

#[tokio::test]
async fn pre_copy_memory_is_exact_across_the_chain() {
    let a = Arc::new(FakeEngine::with(512, 100));
    let b = FakeEngine::new(0);
    a.add("db", "203.0.113.6");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let policy = PolicyConfig { max_downtime: Duration::ZERO, min_pages: 0, max_rounds: 4, min_shrink_pct: 0, ..Default::default() };
    let (_, r) = c.migrate_with("db", MigrateOptions { policy, ..options(Mode::PreCopy) }, None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(r.rounds.len(), 4, "max rounds: {:#?}", r.stop_reason);
    // Four rounds and a final dump, 100 pages written between each: the
    // target must have followed every parent link to get them all.
    let restored = b.memory_of("db");
    assert_eq!(restored.len(), 512);
    assert!(restored == a.frozen(), "the target's memory differs from the source's at the freeze");
    assert!(restored != (0..512).map(|i| page_of("db", i, 0)).collect::<Vec<_>>(), "the workload did write");
}

#[tokio::test]
async fn hash_pre_copy_sends_only_changed_pages_at_the_freeze() {
    let a = Arc::new(FakeEngine::with(2048, 30));
    let b = FakeEngine::new(0);
    a.add("cache", "203.0.113.7");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate_with("cache", options(Mode::HashPreCopy), None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(r.rounds.len(), 1);
    assert!(a.called("checkpoint with_previous=false leave_running=true"), "the base");
    assert!(a.called("checkpoint with_previous=false leave_running=false"), "the final dump");
    assert!(!a.called("pre_dump"));
    // 2048 pages of memory, 30 changed since the base: 2018 reused; and the
    // page map (8 KiB, unchanged) too: every member is deduplicated.
    assert_eq!(r.saved_bytes, (2018 + 2) * PAGE as u64, "{r:#?}");
    assert!(r.checkpoint_bytes > 2048 * PAGE as u64);
    // Had the final archive crossed whole, twice the base would be on the wire.
    assert!(r.bytes_on_wire < r.rounds[0].bytes * 13 / 10, "{} on the wire for a base of {}", r.bytes_on_wire, r.rounds[0].bytes);
    assert!(b.memory_of("cache") == a.frozen(), "rebuilt memory differs");
    b.assert_tidy("id-cache");
}

#[tokio::test]
async fn pre_copy_restore_failure_rolls_back_through_the_chain() {
    let a = Arc::new(FakeEngine::with(256, 10));
    let b = FakeEngine::new(0);
    a.add("db", "203.0.113.6");
    let c = cluster(a.clone(), b.clone(), Faults { fail_restore: true, ..Default::default() }).await;
    let (_, r) = c.migrate_with("db", options(Mode::PreCopy), None).await;
    assert!(matches!(&r.outcome, Outcome::RolledBack { failure } if failure.phase == Phase::Restore), "{r:?}");
    assert_eq!(a.state_of("db").as_deref(), Some("running"));
    assert!(a.called("restore_local"));
    assert_eq!(b.state_of("db"), None);
    assert!(!r.rounds.is_empty());
    // The link into the migration's rounds is gone, and so are the rounds.
    assert!(!a.dir.path().join("db/pre-checkpoint").exists());
}

#[tokio::test]
async fn cancel_during_pre_copy_leaves_the_container_untouched() {
    let a = Arc::new(FakeEngine::with(4096, 2000));
    let b = FakeEngine::new(0);
    a.add("db", "203.0.113.6");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let policy = PolicyConfig { max_downtime: Duration::ZERO, min_pages: 0, max_rounds: 50, min_shrink_pct: 0, ..Default::default() };
    let (_, r) = c.migrate_with("db", MigrateOptions { policy, ..options(Mode::PreCopy) }, Some(Phase::PreCopy)).await;
    assert!(matches!(&r.outcome, Outcome::Refused { failure } if failure.message.contains("cancelled")), "{r:?}");
    assert!(!a.called("checkpoint"), "never frozen");
    assert_eq!(a.state_of("db").as_deref(), Some("running"));
    assert_eq!(b.state_of("db"), None);
    assert_eq!(r.downtime_ms, None);
}

#[tokio::test]
async fn pre_copy_timeout_cancels_or_switches_over_as_asked() {
    for (on_timeout, completed) in [(OnTimeout::Cancel, false), (OnTimeout::Switchover, true)] {
        let a = Arc::new(FakeEngine::with(512, 300));
        let b = FakeEngine::new(0);
        a.add("db", "203.0.113.6");
        let c = cluster(a.clone(), b.clone(), Faults::default()).await;
        let policy =
            PolicyConfig { max_downtime: Duration::ZERO, min_pages: 0, min_shrink_pct: 0, max_rounds: 100, timeout: Duration::ZERO, on_timeout };
        let (_, r) = c.migrate_with("db", MigrateOptions { policy, ..options(Mode::PreCopy) }, None).await;
        assert!(r.stop_reason.as_deref().unwrap_or_default().contains("timeout"), "{r:?}");
        if completed {
            assert_eq!(r.outcome, Outcome::Completed, "{r:?}");
            assert_eq!(b.state_of("db").as_deref(), Some("running"));
        } else {
            assert!(matches!(&r.outcome, Outcome::Refused { failure } if failure.message.contains("--on-timeout")), "{r:?}");
            assert_eq!(a.state_of("db").as_deref(), Some("running"));
            assert!(!a.called("checkpoint"));
        }
    }
}

#[tokio::test]
async fn named_volumes_leave_the_source_only_after_a_move() {
    let (a, b) = (FakeEngine::new(64), FakeEngine::new(0));
    a.add("db", "203.0.113.5");
    a.add_volume("db", "dbdata");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("db", None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(a.count("volume rm dbdata"), 1, "the moved volume's stale copy is removed");

    let (a, b) = (FakeEngine::new(64), FakeEngine::new(0));
    a.add("db", "203.0.113.5");
    a.add_volume("db", "dbdata");
    let faults = Faults { fail_restore: true, ..Default::default() };
    let c = cluster(a.clone(), b.clone(), faults).await;
    let (_, r) = c.migrate("db", None).await;
    assert!(matches!(r.outcome, Outcome::RolledBack { .. }), "{r:#?}");
    assert!(!a.called("volume rm"), "a rolled-back container keeps its volume");
}

#[tokio::test]
async fn target_restore_failure_rolls_back_on_the_source() {
    let (a, b) = (FakeEngine::new(256), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let faults = Faults { fail_restore: true, ..Default::default() };
    let c = cluster(a.clone(), b.clone(), faults).await;
    let (_, r) = c.migrate("web", None).await;
    match &r.outcome {
        Outcome::RolledBack { failure } => {
            assert_eq!(failure.phase, Phase::Restore);
            assert!(failure.message.contains("fail_restore"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.state_of("web").as_deref(), Some("running"), "back on the source");
    assert!(a.called("restore_local"));
    assert_eq!(b.state_of("web"), None, "nothing left on the target");
    b.assert_no_folder("id-web");
    assert!(r.downtime_ms.is_some());
}

#[tokio::test]
async fn a_failing_network_hook_on_the_target_rolls_back_before_any_restore() {
    use std::os::unix::fs::PermissionsExt;
    let (a, b) = (FakeEngine::new(64), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("hook.sh");
    let said = dir.path().join("said");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$TERN_EVENT $TERN_CONTAINER $TERN_ADDRESSES $TERN_PEER\" > {}\necho no route >&2\nexit 4\n", said.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let net = NetworkConfig { hook: Some(hook), hook_timeout: Some(5) };
    let c = cluster_with(a.clone(), b.clone(), Faults::default(), net).await;
    let (_, r) = c.migrate("web", None).await;
    match &r.outcome {
        Outcome::RolledBack { failure } => assert!(failure.message.contains("network hook") && failure.message.contains("no route"), "{failure:?}"),
        other => panic!("expected a rollback: {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&said).unwrap().trim(), "arrived web 203.0.113.5 a");
    assert!(!b.called("restore_import"), "the target must not restore before its hook said yes");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert_eq!(b.state_of("web"), None);
}

#[tokio::test]
async fn corrupted_transfer_is_caught_by_the_digest_and_rolled_back() {
    let (a, b) = (FakeEngine::new(256), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let faults = Faults { corrupt_checkpoint: true, ..Default::default() };
    let c = cluster(a.clone(), b.clone(), faults).await;
    let (_, r) = c.migrate("web", None).await;
    match &r.outcome {
        Outcome::RolledBack { failure } => {
            assert_eq!(failure.phase, Phase::Verify);
            assert!(failure.message.contains("does not match its digest"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert!(!b.called("restore_import"), "a corrupt archive is never restored");
    b.assert_no_folder("id-web");
}

#[tokio::test]
async fn name_taken_on_target_refuses_before_the_freeze() {
    let (a, b) = (FakeEngine::new(256), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    b.add("web", "203.0.113.9");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", None).await;
    assert!(matches!(&r.outcome, Outcome::Refused { failure } if failure.message.contains("already exists")), "{r:?}");
    assert!(!a.called("checkpoint"), "never frozen");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert_eq!(r.downtime_ms, None);
}

#[tokio::test]
async fn failed_dump_leaves_the_container_running() {
    let a = Arc::new(FakeEngine { fail_checkpoint: true, ..FakeEngine::with(256, 8) });
    let b = FakeEngine::new(0);
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", None).await;
    assert!(matches!(&r.outcome, Outcome::RolledBack { failure } if failure.message.contains("CRIU dump failed")), "{r:?}");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert!(!a.called("restore_local"), "a failed dump left it running; nothing to restore");
    assert_eq!(b.state_of("web"), None);
}

#[tokio::test]
async fn cancel_during_prepare_is_a_refusal_and_after_freeze_a_rollback() {
    // A slow inspect keeps the source in prepare while the cancel arrives.
    let a = Arc::new(FakeEngine { inspect_delay: Duration::from_millis(300), ..FakeEngine::with(256, 8) });
    let b = FakeEngine::new(0);
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", Some(Phase::Prepare)).await;
    assert!(matches!(&r.outcome, Outcome::Refused { failure } if failure.message.contains("cancelled")), "{r:?}");
    assert!(!a.called("checkpoint"));

    let (a, b) = (FakeEngine::new(2048), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", Some(Phase::Checkpoint)).await;
    assert!(matches!(&r.outcome, Outcome::RolledBack { failure } if failure.message.contains("cancelled")), "{r:?}");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert_eq!(b.state_of("web"), None);
}

#[tokio::test]
async fn hostile_frames_get_errors_and_the_agent_keeps_serving() {
    let (a, b) = (FakeEngine::new(0), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a, b, Faults::default()).await;
    let s = c.session("a").await;
    // A length prefix of 4 GiB, then garbage, then a zero variant.
    for junk in [vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], vec![0, 0, 0, 1, 0], vec![0, 0, 0, 3, 9, 9, 9]] {
        let (mut send, mut recv) = s.conn.open_bi().await.unwrap();

        send.write_all(&junk).await.unwrap();
        send.finish().unwrap();
        // The agent drops the stream; it must not answer with anything valid.
        let r = tokio::time::timeout(Duration::from_secs(5), read_frame::<_, Response>(&mut recv)).await.unwrap();
        assert!(!matches!(r, Ok(Some(_))), "{r:?}");
    }
    // Still alive and serving on the same connection.
    match s.request(&Request::Containers).await.unwrap() {
        Response::Containers(c) => assert_eq!(c.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn compressible_memory_is_compressed_on_the_wire_and_arrives_intact() {
    // The fake's pages repeat a 32-byte pattern: very compressible.
    let (a, b) = (FakeEngine::new(2048), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate_with("web", MigrateOptions { compress: Compression::Auto, ..options(Mode::StopAndCopy) }, None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(r.zstd_in >= 2048 * PAGE as u64 && r.zstd_out * 10 < r.zstd_in, "{r:#?}");
    assert!(r.bytes_on_wire < r.checkpoint_bytes / 5, "{} on the wire for {}", r.bytes_on_wire, r.checkpoint_bytes);
    assert!(b.memory_of("web") == a.frozen(), "memory arrives intact");
    // And with compression off, every byte crosses.
    let (a, b) = (FakeEngine::new(2048), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate_with("web", options(Mode::StopAndCopy), None).await;
    assert_eq!((r.zstd_in, r.zstd_out), (0, 0));
    assert!(r.bytes_on_wire >= r.checkpoint_bytes);
}

// Admission and stream limits on the target (target/admission.rs,
// target/archive.rs): a refusal is a rollback, the container runs on.

#[tokio::test]
async fn a_checkpoint_asking_for_a_host_folder_is_refused_and_rolled_back() {
    let mut a = FakeEngine::with(64, 8);
    a.spec_bind = Some("/".into());
    let (a, b) = (Arc::new(a), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", None).await;
    match &r.outcome {
        Outcome::RolledBack { failure } => {
            assert_eq!(failure.phase, Phase::Verify, "{failure}");
            assert!(
                failure.message.contains(
                    "refused by this host's admission policy: a bind mount from outside the container's own folders and volumes: spec.dump mounts / on /host"
                ) && failure.message.contains("allow_bind_sources = [\"/\"]"),
                "{failure}"
            );
        }
        other => panic!("expected a rollback: {other:?}"),
    }
    assert!(!b.called("restore_import"), "nothing of it ran on the target");
    assert_eq!(a.state_of("web").as_deref(), Some("running"), "back on the source");
    assert_eq!(b.state_of("web"), None);
    b.assert_no_folder("id-web");

    // The target's operator allows it: it moves.
    let c =
        cluster_tuned(a.clone(), b.clone(), Faults::default(), NetworkConfig::default(), |cfg| cfg.admission.allow_bind_sources = vec!["/".into()])
            .await;
    let (_, r) = c.migrate("web", None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(b.state_of("web").as_deref(), Some("running"));
}

#[tokio::test]
async fn a_checkpoint_larger_than_announced_is_cut_off_and_rolled_back() {
    // 768 pages: 3 MiB of images, where the source announces 1 MiB.
    let (a, b) = (FakeEngine::new(768), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    a.state.lock().unwrap().containers.get_mut("web").unwrap().info.memory_bytes = 1 << 20;
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster_tuned(a.clone(), b.clone(), Faults::default(), NetworkConfig::default(), |cfg| {
        cfg.limits.stream_floor_mib = Some(0);
        cfg.limits.stream_factor = Some(1);
    })
    .await;
    let (_, r) = c.migrate("web", None).await;
    match &r.outcome {
        Outcome::RolledBack { failure } => {
            assert_eq!(failure.phase, Phase::Verify, "{failure}");
            assert!(failure.message.contains("receiving from the source failed: the data grew past 1048576 bytes"), "{failure}");
        }
        other => panic!("expected a rollback: {other:?}"),
    }
    assert!(!b.called("restore_import"));
    assert_eq!(a.state_of("web").as_deref(), Some("running"), "back on the source");
    assert_eq!(b.state_of("web"), None);
    b.assert_no_folder("id-web");
}

// ---- Who may order whom (issue 13): roles, tickets, revocation. ----

impl Cluster {
    /// `who` asks `host` to receive `name` with `ticket`; the target's first answer.
    async fn receive_as(&self, who: &str, host: &str, container: ContainerInfo, ticket: Ticket) -> TargetMsg {
        let begin = Begin {
            id: 7,
            source: who.into(),
            container,
            tcp_established: false,
            mode: Mode::StopAndCopy,
            lazy_restore: false,
            post_copy_first: Default::default(),
            ticket,
        };
        let s = self.session_as(who, host).await.unwrap();
        let (mut send, mut recv) = s.open(&Request::Receive(begin)).await.unwrap();
        let first = s.read::<TargetMsg>(&mut recv, Duration::from_secs(10)).await.unwrap();
        let _ = write_frame(&mut send, &SourceMsg::Abort { reason: "test".into() }).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(5), read_frame::<_, TargetMsg>(&mut recv)).await;
        first
    }
}

fn refusal(r: Result<Response, tern_transport::rpc::RpcError>) -> String {
    match r {
        Err(tern_transport::rpc::RpcError::Remote { message, .. }) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_host_certificate_cannot_order_an_agent_around() {
    let (a, b) = (FakeEngine::new(16), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let ticket = c.ticket("web").await;
    // With b's certificate, tell a to move its container to b.
    let s = c.session_as("b", "a").await.unwrap();
    let req = MigrateRequest {
        id: 9,
        container: "web".into(),
        target: Peer { name: "b".into(), address: c.addrs["b"].to_string() },
        options: options(Mode::StopAndCopy),
        ticket,
        evacuation: false,
    };
    let (_send, mut recv) = s.open(&Request::Migrate(req)).await.unwrap();
    // A Migrate's stream carries events: the refusal is one.
    match s.read::<MigrateEvent>(&mut recv, Duration::from_secs(10)).await.unwrap() {
        MigrateEvent::Refused(e) => assert_eq!(e.message, "refused: Migrate is for the coordinator only, and b holds a host certificate"),
        other => panic!("{other:?}"),
    }
    let probe = ProbeRequest { target: Peer { name: "b".into(), address: c.addrs["b"].to_string() }, bytes: 1 << 20 };
    let m = refusal(s.request(&Request::Probe(probe)).await);
    assert!(m.contains("Probe is for the coordinator only"), "{m}");
    for r in [Request::Facts, Request::Containers, Request::CheckIncoming(stand_in("x"))] {
        let m = refusal(s.request(&r).await);
        assert!(m.contains("for the coordinator only, and b holds a host certificate"), "{m}");
    }
    // And the coordinator may not pose as a source, nor be a probe's sink.
    let co = c.session("b").await;
    let m = refusal(co.request(&Request::Sink { bytes: 1 }).await);
    assert_eq!(m, "refused: Sink comes from another agent only, and coordinator holds a coordinator certificate");
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
    assert!(!a.called("checkpoint"), "nothing was frozen");
}

#[tokio::test]
async fn a_migration_without_the_right_ticket_is_refused_and_the_container_keeps_running() {
    let (a, b) = (FakeEngine::new(16), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let info = c.container("a", "web").await;
    let signer = c.signer();
    let now = tern_transport::ticket::now_secs();
    let good = signer.issue(7, "a", "b", &info, now);
    let resign = |f: &dyn Fn(&mut TicketBody)| {
        let mut body = good.body.clone();
        f(&mut body);
        signer.sign(body)
    };
    let mut tampered = good.clone();
    tampered.body.spec_hash = [7; 32];
    let cases: Vec<(&str, Ticket, &str)> = vec![
        ("none", Ticket::default(), "signer is not trusted"),
        ("another source", resign(&|b| b.source = "c".into()), "names c as source, but a sent it"),
        ("expired", resign(&|b| (b.issued_at, b.expires_at) = (now - 1300, now - 700)), "migration ticket expired 70"),
        ("wrong target", resign(&|b| b.target = "c".into()), "is for target c, not for this host (b)"),
        ("tampered", tampered, "signature does not verify"),
        ("another spec", resign(&|b| b.spec_hash = [7; 32]), "spec differs"),
        ("another container", resign(&|b| b.container_id = "id-db".into()), "container ID"),
    ];
    for (what, ticket, says) in cases {
        let (_, r) = c.migrate_ticket("web", options(Mode::StopAndCopy), None, ticket).await;
        match &r.outcome {
            Outcome::Refused { failure } => assert!(failure.message.contains(says), "{what}: {}", failure.message),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(a.state_of("web").as_deref(), Some("running"), "{what}");
        assert_eq!(b.state_of("web"), None, "{what}");
    }
    assert!(!a.called("checkpoint"), "nothing was frozen");
    // The good ticket moves it; the same ticket again is refused.
    let (_, r) = c.migrate_ticket("web", options(Mode::StopAndCopy), None, good.clone()).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    match c.receive_as("a", "b", info, good).await {
        TargetMsg::Failed(f) => assert!(f.message.contains("was used already"), "{}", f.message),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_host_cannot_push_with_another_hosts_ticket_nor_replay_one() {
    let (a, b) = (FakeEngine::new(16), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let ticket = c.ticket("web").await;
    let info = c.container("a", "web").await;
    // c holds a ticket for a → b and pushes to b itself.
    match c.receive_as("c", "b", info.clone(), ticket.clone()).await {
        TargetMsg::Failed(f) => assert_eq!(f.message, "the migration ticket names a as source, but c sent it"),
        other => panic!("{other:?}"),
    }
    // a uses it once (admitted), then again.
    assert!(matches!(c.receive_as("a", "b", info.clone(), ticket.clone()).await, TargetMsg::Ready { .. }));
    match c.receive_as("a", "b", info, ticket).await {
        TargetMsg::Failed(f) => assert!(f.message.contains("used already"), "{}", f.message),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.state_of("web").as_deref(), Some("running"));
}

#[tokio::test]
async fn resolve_answers_only_the_source_of_record() {
    let (a, b) = (FakeEngine::new(16), FakeEngine::new(0));
    a.add("web", "203.0.113.5");
    b.add("db", "203.0.113.6");
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let (_, r) = c.migrate("web", None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    let id = r.id;
    let ask = |who: &'static str, name: &'static str, verdict: Verdict| {
        let c = &c;
        async move {
            let s = c.session_as(who, "b").await.unwrap();
            let req = ResolveRequest { id, container: name.into(), container_id: format!("id-{name}"), verdict };
            s.request(&Request::Resolve(req)).await
        }
    };
    // Committed: no verdict removes it, not even an abort from its source.
    assert_eq!(ask("a", "web", Verdict::Abort).await.unwrap(), Response::Resolved(Resolution::Kept));
    assert_eq!(b.state_of("web").as_deref(), Some("running"));
    // An unrelated host learns nothing: not about web, not about db, not about nothing.
    for name in ["web", "db", "nothing"] {
        let m = refusal(ask("c", name, Verdict::Abort).await);
        assert_eq!(m, format!("migration {id} here is not c's to settle"));
    }
    // a did not move db here either.
    assert_eq!(refusal(ask("a", "db", Verdict::Abort).await), format!("migration {id} here is not a's to settle"));
    assert_eq!(b.state_of("db").as_deref(), Some("running"));
}

#[tokio::test]
async fn a_revoked_host_cannot_connect_and_probes_are_bounded() {
    let (a, b) = (FakeEngine::new(0), FakeEngine::new(0));
    let c = cluster(a, b, Faults::default()).await;
    assert!(c.session_as("c", "b").await.is_ok(), "an issued host connects");
    let s = c.session_as("c", "b").await.unwrap();
    let (mut send, mut recv) = s.open(&Request::Sink { bytes: MAX_PROBE_BYTES + 1 }).await.unwrap();
    let _ = send.finish();
    match s.read::<Response>(&mut recv, Duration::from_secs(10)).await.unwrap() {
        Response::Error(e) => assert!(e.message.contains("at most 1073741824 bytes"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    tern_transport::pki::revoke(c.dir.path(), "c", None).unwrap();
    let e = c.session_as("c", "b").await.err().expect("a revoked certificate is refused");
    assert!(e.to_string().contains("do not trust each other's certificate"), "{e}");
    // The others are not affected.
    assert!(c.session_as("a", "b").await.is_ok());
}

#[tokio::test]
async fn a_peer_that_sends_no_hello_is_closed_and_one_peer_gets_eight_connections() {
    let c = cluster(FakeEngine::new(0), FakeEngine::new(0), Faults::default()).await;
    let ep = tern_transport::client_endpoint(&c.coordinator).unwrap();
    let silent = tern_transport::connect(&ep, c.addrs["a"], "a").await.unwrap();
    let t0 = std::time::Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(15), silent.closed()).await.expect("closed for want of a Hello");
    assert!(reason.to_string().contains("no hello in time"), "{reason}");
    assert!(t0.elapsed() >= Duration::from_secs(4), "{:?}", t0.elapsed());
    // Eight sessions from the coordinator are served; a ninth is closed.
    let mut kept = Vec::new();
    for _ in 0..tern_transport::endpoint::MAX_CONNECTIONS_PER_PEER {
        kept.push(c.session("a").await);
    }
    let ninth = tern_transport::connect(&ep, c.addrs["a"], "a").await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), ninth.closed()).await.unwrap();
    assert!(reason.to_string().contains("too many connections"), "{reason}");
    assert!(matches!(kept[0].request(&Request::Containers).await.unwrap(), Response::Containers(_)));
    // Another peer still gets in.
    assert!(c.session_as("b", "a").await.is_ok());
}

#[tokio::test]
async fn an_evacuations_move_is_recorded_by_its_source_and_may_come_back_to_a_cordoned_host() {
    let (a, b) = (FakeEngine::new(16), FakeEngine::new(0));
    a.add("web", "203.0.113.7");
    a.add("plain", "203.0.113.8");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;

    // A plain move records nothing; an evacuation's does, on its source.
    let ticket = c.ticket("plain").await;
    let (_, r) = c.migrate_marked("plain", options(Mode::StopAndCopy), None, ticket, false).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(tern_agent::evacuation::load(&c.state_dir("a")).unwrap(), EvacuationRecord::default());
    let ticket = c.ticket("web").await;
    let (_, r) = c.migrate_marked("web", options(Mode::StopAndCopy), None, ticket, true).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert!(!r.warnings.iter().any(|w| w.contains("evacuation")), "{:?}", r.warnings);
    let record = tern_agent::evacuation::load(&c.state_dir("a")).unwrap();
    assert_eq!(record.containers.len(), 1, "{record:?}");
    let e = &record.containers[0];
    assert_eq!((e.name.as_str(), e.id.as_str(), e.target.as_str(), e.migration), ("web", "id-web", "b", 7));
    // The coordinator reads it (and only the coordinator).
    match c.session("a").await.request(&Request::Evacuation(EvacuationRequest { forget: vec![] })).await.unwrap() {
        Response::Evacuation(r) => assert_eq!(r, record),
        other => panic!("{other:?}"),
    }
    let denied = c.session_as("b", "a").await.unwrap().request(&Request::Evacuation(EvacuationRequest { forget: vec!["id-web".into()] })).await;
    assert!(denied.unwrap_err().to_string().contains("for the coordinator only"));
    assert_eq!(tern_agent::evacuation::load(&c.state_dir("a")).unwrap(), record, "a host's request changed nothing");

    // b plays the evacuated host coming back: cordoned, it refuses what it
    // never sent away, and takes back what its record holds, which then
    // leaves the record.
    let (a, b) = (FakeEngine::new(16), FakeEngine::new(0));
    a.add("back", "203.0.113.9");
    a.add("stranger", "203.0.113.10");
    b.state.lock().unwrap().images.insert(IMG.into());
    let c = cluster(a.clone(), b.clone(), Faults::default()).await;
    let b_dir = c.state_dir("b");
    tern_agent::cordon::set(&b_dir, Some("evacuating (tern evacuate)".into()), 1).unwrap();
    for (name, when) in [("back", 10), ("gone", 11)] {
        let e = Evacuated { name: name.into(), id: format!("id-{name}"), target: "a".into(), migration: when, moved_unix: when };
        tern_agent::evacuation::record(&b_dir, e).unwrap();
    }
    let (_, r) = c.migrate("stranger", None).await;
    assert!(matches!(&r.outcome, Outcome::Refused { failure } if failure.message.contains("b is cordoned")), "{r:#?}");
    assert_eq!(a.state_of("stranger").as_deref(), Some("running"));
    let (_, r) = c.migrate("back", None).await;
    assert_eq!(r.outcome, Outcome::Completed, "{r:#?}");
    assert_eq!(b.state_of("back").as_deref(), Some("running"));
    let left = tern_agent::evacuation::load(&b_dir).unwrap();
    assert_eq!(left.containers.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["gone"]);
    assert!(tern_agent::cordon::current(&b_dir).is_some(), "the cordon is the coordinator's to lift");
    // `tern return` forgets what will not come back.
    match c.session("b").await.request(&Request::Evacuation(EvacuationRequest { forget: vec!["id-gone".into()] })).await.unwrap() {
        Response::Evacuation(r) => assert_eq!(r, EvacuationRecord::default()),
        other => panic!("{other:?}"),
    }
}
