//! proptest strategies for every wire message (round trips in
//! `tests/roundtrip.rs`, fuzz seeds in `examples/fuzz_seeds.rs`).
#![allow(dead_code)]

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tern_proto::checkpoint as cp;
use tern_proto::compat::{Finding, Severity};
use tern_proto::facts::{Attachment, Capability, CgroupsVersion, ContainerInfo, Cordon, HostFacts, HostStatus, PublishedPort, TcpConnection, Volume};
use tern_proto::policy::{OnTimeout, PolicyConfig};
use tern_proto::*;

/// Short text, any characters.
pub fn text() -> impl Strategy<Value = String> {
    ".{0,10}"
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..3)
}

fn ip() -> impl Strategy<Value = IpAddr> {
    any::<IpAddr>()
}

/// A socket address as the wire carries it: serde sends an IPv6 one's
/// address and port only (its flow label and scope, an interface index
/// that means nothing on another host, are dropped).
fn sock() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

pub fn mode() -> impl Strategy<Value = Mode> {
    select(vec![Mode::Invalid, Mode::StopAndCopy, Mode::PreCopy, Mode::HashPreCopy, Mode::PostCopy])
}

fn phase() -> impl Strategy<Value = Phase> {
    select(vec![
        Phase::Invalid,
        Phase::Prepare,
        Phase::Image,
        Phase::PreCopy,
        Phase::Checkpoint,
        Phase::Verify,
        Phase::Restore,
        Phase::Cleanup,
        Phase::Rollback,
    ])
}

fn capability() -> impl Strategy<Value = Capability> {
    (any::<bool>(), text()).prop_map(|(supported, detail)| Capability { supported, detail })
}

pub fn host_facts() -> impl Strategy<Value = HostFacts> {
    let cgroups = select(vec![CgroupsVersion::Invalid, CgroupsVersion::V1, CgroupsVersion::Hybrid, CgroupsVersion::V2]);
    (
        (text(), text(), text(), text(), text(), text(), cgroups),
        (text(), text(), texts(), text(), capability(), capability(), capability()),
        host_status(),
    )
        .prop_map(|((name, agent_version, podman_version, runtime_name, runtime_version, criu_version, cgroups), rest, status)| {
            let (kernel, arch, cpu_flags, network_backend, dirty_tracking, lazy_restore, dump_other_users) = rest;
            HostFacts {
                name,
                agent_version,
                podman_version,
                runtime_name,
                runtime_version,
                criu_version,
                cgroups,
                kernel,
                arch,
                cpu_flags,
                network_backend,
                dirty_tracking,
                lazy_restore,
                dump_other_users,
                status,
            }
        })
}

fn cordon() -> impl Strategy<Value = Cordon> {
    (text(), any::<u64>()).prop_map(|(reason, since_unix)| Cordon { reason, since_unix })
}

fn host_status() -> impl Strategy<Value = HostStatus> {
    (proptest::option::of(cordon()), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(cordon, memory_available_bytes, disk_available_bytes, bandwidth_cap)| HostStatus {
            cordon,
            memory_available_bytes,
            disk_available_bytes,
            bandwidth_cap,
        },
    )
}

pub fn container() -> impl Strategy<Value = ContainerInfo> {
    let attachment = (text(), text(), vec(ip(), 0..2), text()).prop_map(|(network, driver, ips, mac)| Attachment { network, driver, ips, mac });
    let port = (text(), any::<u16>(), any::<u16>(), text()).prop_map(|(host_ip, host_port, container_port, protocol)| PublishedPort {
        host_ip,
        host_port,
        container_port,
        protocol,
    });
    let conn = (sock(), sock()).prop_map(|(local, remote)| TcpConnection { local, remote });
    let volume = (text(), text()).prop_map(|(name, path)| Volume { name, path });
    (
        (text(), text(), text(), text(), text(), vec(ip(), 0..3), any::<u64>()),
        (proptest::option::of(text()), vec(text(), 0..2)),
        (
            any::<u64>(),
            vec(volume, 0..2),
            any::<u32>(),
            vec(attachment, 0..2),
            vec(port, 0..2),
            vec(conn, 0..2),
            vec(any::<u32>(), 0..3),
            proptest::option::of(text()),
        ),
    )
        .prop_map(|((name, id, image, image_id, state, ips, memory_bytes), (pod, dependencies), rest)| {
            let (files_bytes, volumes, pid, networks, ports, connections, process_uids, systemd_unit) = rest;
            ContainerInfo {
                name,
                id,
                image,
                image_id,
                state,
                ips,
                memory_bytes,
                files_bytes,
                volumes,
                pid,
                networks,
                ports,
                connections,
                process_uids,
                systemd_unit,
                pod,
                dependencies,
            }
        })
}

fn finding() -> impl Strategy<Value = Finding> {
    let severity = select(vec![Severity::Invalid, Severity::Ok, Severity::Warn, Severity::Block, Severity::Forced]);
    (text(), text(), text(), severity, text()).prop_map(|(field, source, target, severity, note)| Finding { field, source, target, severity, note })
}

fn peer() -> impl Strategy<Value = Peer> {
    (text(), text()).prop_map(|(name, address)| Peer { name, address })
}

fn policy() -> impl Strategy<Value = PolicyConfig> {
    let on_timeout = select(vec![OnTimeout::Invalid, OnTimeout::Cancel, OnTimeout::Switchover]);
    (any::<Duration>(), any::<u32>(), any::<u64>(), any::<u32>(), any::<Duration>(), on_timeout).prop_map(
        |(max_downtime, max_rounds, min_pages, min_shrink_pct, timeout, on_timeout)| PolicyConfig {
            max_downtime,
            max_rounds,
            min_pages,
            min_shrink_pct,
            timeout,
            on_timeout,
        },
    )
}

fn compression() -> impl Strategy<Value = Compression> {
    select(vec![Compression::Invalid, Compression::None, Compression::Zstd, Compression::Auto])
}

fn ticket() -> impl Strategy<Value = Ticket> {
    let ids = (any::<[u8; 16]>(), any::<u64>(), text(), text(), text(), text(), text(), any::<[u8; 32]>());
    let body = (ids, any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
        |((ticket_id, migration_id, source, target, container, container_id, image_id, spec_hash), issued_at, expires_at, evacuation)| TicketBody {
            ticket_id,
            migration_id,
            source,
            target,
            container,
            container_id,
            image_id,
            spec_hash,
            issued_at,
            expires_at,
            evacuation,
        },
    );
    (body, vec(any::<u8>(), 0..80), vec(any::<u8>(), 0..120)).prop_map(|(body, signature, cert)| Ticket { body, signature, cert })
}

fn post_copy_first() -> impl Strategy<Value = tern_proto::plan::PostCopyFirst> {
    use tern_proto::plan::PostCopyFirst;
    select(vec![PostCopyFirst::Nothing, PostCopyFirst::SoftDirtyRounds, PostCopyFirst::HashBase])
}

fn begin() -> impl Strategy<Value = Begin> {
    (any::<u64>(), text(), container(), any::<bool>(), mode(), any::<bool>(), post_copy_first(), ticket()).prop_map(
        |(id, source, container, tcp_established, mode, lazy_restore, post_copy_first, ticket)| Begin {
            id,
            source,
            container,
            tcp_established,
            mode,
            lazy_restore,
            post_copy_first,
            ticket,
        },
    )
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), vec(any::<u16>(), 0..3), text(), text()).prop_map(|(version, supported, name, software)| Hello {
        version,
        supported,
        name,
        software,
    })
}

pub fn hello_reply() -> impl Strategy<Value = HelloReply> {
    prop_oneof![
        Just(HelloReply::Invalid),
        (any::<u16>(), text(), text()).prop_map(|(version, name, software)| HelloReply::Accepted { version, name, software }),
        text().prop_map(|reason| HelloReply::Refused { reason }),
    ]
}

pub fn request() -> impl Strategy<Value = Request> {
    let options = (mode(), compression(), any::<bool>(), any::<bool>(), policy(), any::<bool>(), any::<u64>(), post_copy_first()).prop_map(
        |(mode, compress, tcp_established, allow_reset, policy, lazy_restore, bandwidth, post_copy_first)| MigrateOptions {
            mode,
            compress,
            tcp_established,
            allow_reset,
            policy,
            lazy_restore,
            bandwidth,
            post_copy_first,
        },
    );
    let migrate = (any::<u64>(), text(), peer(), options, ticket(), any::<bool>())
        .prop_map(|(id, container, target, options, ticket, evacuation)| MigrateRequest { id, container, target, options, ticket, evacuation });
    let verdict = select(vec![Verdict::Invalid, Verdict::Commit, Verdict::Abort]);
    prop_oneof![
        Just(Request::Invalid),
        hello().prop_map(Request::Hello),
        Just(Request::Facts),
        Just(Request::Containers),
        container().prop_map(Request::CheckIncoming),
        migrate.prop_map(Request::Migrate),
        begin().prop_map(Request::Receive),
        (peer(), any::<u64>()).prop_map(|(target, bytes)| Request::Probe(ProbeRequest { target, bytes })),
        any::<u64>().prop_map(|bytes| Request::Sink { bytes }),
        (any::<u64>(), text(), text(), verdict).prop_map(|(id, container, container_id, verdict)| Request::Resolve(ResolveRequest {
            id,
            container,
            container_id,
            verdict
        })),
        proptest::option::of(text()).prop_map(|cordon| Request::Cordon(CordonRequest { cordon })),
        vec(text(), 0..3).prop_map(|forget| Request::Evacuation(EvacuationRequest { forget })),
        any::<u64>().prop_map(|id| Request::Pages { id }),
        (proptest::option::of(text()), select(vec![PostCopyAction::Invalid, PostCopyAction::Status, PostCopyAction::Resume, PostCopyAction::GiveUp]))
            .prop_map(|(container, action)| Request::PostCopy(PostCopyRequest { container, action })),
        checkpoint_request().prop_map(Request::Checkpoint),
        (stored_checkpoint(), proptest::option::of((text(), any::<[u8; 32]>()))).prop_map(|(checkpoint, base)| Request::CheckpointPut(Box::new(
            cp::PutCheckpoint { checkpoint, base: base.map(|(name, digest)| cp::BaseRef { name, digest }) }
        ))),
    ]
}

pub fn stored_checkpoint() -> impl Strategy<Value = cp::StoredCheckpoint> {
    let content = (any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(processes, threads, memory_bytes, tcp_connections, files_bytes, images_bytes)| cp::Content {
            processes,
            threads,
            memory_bytes,
            tcp_connections,
            files_bytes,
            images_bytes,
        },
    );
    let flags = (any::<bool>(), any::<bool>(), any::<bool>(), proptest::option::of(any::<u32>()));
    (text(), container(), text(), host_facts(), any::<u64>(), any::<u64>(), any::<[u8; 32]>(), content, flags).prop_map(
        |(name, container, taken_on, facts, created_unix, bytes, digest, content, (tcp_established, file_locks, left_running, standby_keep))| {
            cp::StoredCheckpoint {
                name,
                container,
                taken_on,
                facts,
                created_unix,
                bytes,
                digest,
                content,
                tcp_established,
                file_locks,
                left_running,
                standby_keep,
            }
        },
    )
}

fn standby_spec() -> impl Strategy<Value = cp::StandbySpec> {
    (text(), peer(), any::<u64>(), any::<u32>()).prop_map(|(container, store, every_secs, keep)| cp::StandbySpec {
        container,
        store,
        every_secs,
        keep,
    })
}

pub fn checkpoint_request() -> impl Strategy<Value = cp::CheckpointRequest> {
    let create = (text(), proptest::option::of(text()), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(container, name, leave_running, tcp_established, file_locks)| cp::CreateCheckpoint {
            container,
            name,
            leave_running,
            tcp_established,
            file_locks,
        },
    );
    let restore = (text(), any::<[u8; 32]>(), vec(text(), 0..3), any::<bool>()).prop_map(|(name, digest, as_names, replace)| cp::RestoreCheckpoint {
        name,
        digest,
        as_names,
        replace,
    });
    let standby = prop_oneof![
        Just(cp::StandbyOrder::Invalid),
        standby_spec().prop_map(cp::StandbyOrder::Set),
        text().prop_map(|container| cp::StandbyOrder::Stop { container }),
        Just(cp::StandbyOrder::List),
    ];
    prop_oneof![
        Just(cp::CheckpointRequest::Invalid),
        create.prop_map(cp::CheckpointRequest::Create),
        Just(cp::CheckpointRequest::List),
        text().prop_map(|name| cp::CheckpointRequest::Remove { name }),
        (text(), peer()).prop_map(|(name, to)| cp::CheckpointRequest::Send { name, to }),
        restore.prop_map(cp::CheckpointRequest::Restore),
        standby.prop_map(cp::CheckpointRequest::Standby),
        any::<u64>().prop_map(|bytes| cp::CheckpointRequest::Room { bytes }),
        (text(), text()).prop_map(|(name, image)| cp::CheckpointRequest::Image { name, image }),
    ]
}

fn standby_status() -> impl Strategy<Value = cp::StandbyStatus> {
    let run = (text(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>())
        .prop_map(|(name, at_unix, bytes, wire_bytes, pages_reused, ms)| cp::StandbyRun { name, at_unix, bytes, wire_bytes, pages_reused, ms });
    (standby_spec(), proptest::option::of(run), proptest::option::of((any::<u64>(), text())), any::<u64>())
        .prop_map(|(spec, last, failing, next_in_secs)| cp::StandbyStatus { spec, last, failing, next_in_secs })
}

fn fill_status() -> impl Strategy<Value = FillStatus> {
    let link = prop_oneof![
        Just(FillLink::Invalid),
        Just(FillLink::Up),
        (any::<u64>(), text()).prop_map(|(since_unix, error)| FillLink::Lost { since_unix, error }),
        (any::<u64>(), text()).prop_map(|(since_unix, error)| FillLink::Stalled { since_unix, error }),
    ];
    (any::<u64>(), text(), text(), any::<u64>(), any::<u64>(), link).prop_map(|(id, container, target, since_unix, bytes, link)| FillStatus {
        id,
        container,
        target,
        since_unix,
        bytes,
        link,
    })
}

pub fn response() -> impl Strategy<Value = Response> {
    let probe = (text(), text(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(from, to, bytes, ms, bytes_on_wire, lost_packets, rtt_us)| ProbeReport { from, to, bytes, ms, bytes_on_wire, lost_packets, rtt_us },
    );
    let resolution = select(vec![Resolution::Invalid, Resolution::Busy, Resolution::Kept, Resolution::Absent]);
    prop_oneof![
        Just(Response::Invalid),
        hello_reply().prop_map(Response::Hello),
        host_facts().prop_map(Response::Facts),
        vec(container(), 0..2).prop_map(Response::Containers),
        vec(finding(), 0..3).prop_map(Response::IncomingCheck),
        probe.prop_map(Response::Probe),
        (any::<u64>(), any::<u64>()).prop_map(|(bytes, ms)| Response::Sunk { bytes, ms }),
        resolution.prop_map(Response::Resolved),
        (proptest::option::of(cordon()), proptest::option::of(cordon())).prop_map(|(was, now)| Response::Cordon(CordonChange { was, now })),
        vec((text(), text(), text(), any::<u64>(), any::<u64>()), 0..3).prop_map(|v| Response::Evacuation(EvacuationRecord {
            containers: v
                .into_iter()
                .map(|(name, id, target, migration, moved_unix)| Evacuated { name, id, target, migration, moved_unix })
                .collect()
        })),
        text().prop_map(|message| Response::Error(RemoteError { message })),
        vec(fill_status(), 0..3).prop_map(Response::PostCopy),
        vec(stored_checkpoint(), 0..2).prop_map(Response::Checkpoints),
        vec((text(), text(), vec(ip(), 0..2), any::<u64>()), 0..3)
            .prop_map(|v| Response::RestoredAs(v.into_iter().map(|(name, id, ips, ms)| cp::RestoredContainer { name, id, ips, ms }).collect())),
        (any::<bool>(), any::<bool>()).prop_map(|(needs_image, base_ok)| Response::CheckpointReady { needs_image, base_ok }),
        vec(standby_status(), 0..2).prop_map(Response::Standby),
    ]
}

fn digest() -> impl Strategy<Value = Digest> {
    (any::<u64>(), any::<[u8; 32]>()).prop_map(|(bytes, blake3)| Digest { bytes, blake3 })
}

fn failure() -> impl Strategy<Value = Failure> {
    (phase(), text()).prop_map(|(phase, message)| Failure { phase, message })
}

pub fn source_msg() -> impl Strategy<Value = SourceMsg> {
    prop_oneof![
        Just(SourceMsg::Invalid),
        digest().prop_map(SourceMsg::ImageSent),
        (any::<u32>(), digest()).prop_map(|(round, digest)| SourceMsg::RoundSent { round, digest }),
        any::<u32>().prop_map(|rounds| SourceMsg::RoundsDone { rounds }),
        digest().prop_map(SourceMsg::CheckpointSent),
        Just(SourceMsg::Commit),
        text().prop_map(|reason| SourceMsg::Abort { reason }),
    ]
}

pub fn steps() -> impl Strategy<Value = Vec<StepTime>> {
    let step = select(vec![
        FrozenStep::Invalid,
        FrozenStep::CriuDump,
        FrozenStep::PodmanExport,
        FrozenStep::Transfer,
        FrozenStep::Verify,
        FrozenStep::Admit,
        FrozenStep::Hook,
        FrozenStep::CriuRestore,
        FrozenStep::PodmanRestore,
        FrozenStep::Other,
    ]);
    vec((step, any::<u64>()).prop_map(|(step, ms)| StepTime { step, ms }), 0..4)
}

pub fn target_msg() -> impl Strategy<Value = TargetMsg> {
    let restored = (any::<u64>(), any::<u64>(), any::<u64>(), any::<Option<u64>>(), steps(), any::<bool>(), texts(), container()).prop_map(
        |(verify_ms, restore_ms, confirm_ms, memory_fill_ms, steps, images_in_ram, notes, container)| RestoreInfo {
            verify_ms,
            restore_ms,
            confirm_ms,
            memory_fill_ms,
            steps,
            images_in_ram,
            notes,
            container,
        },
    );
    prop_oneof![
        Just(TargetMsg::Invalid),
        any::<bool>().prop_map(|needs_image| TargetMsg::Ready { needs_image }),
        Just(TargetMsg::ImageLoaded),
        any::<u32>().prop_map(|round| TargetMsg::RoundStored { round }),
        any::<u64>().prop_map(|bytes| TargetMsg::RoundsPrepared { bytes }),
        restored.prop_map(TargetMsg::Restored),
        Just(TargetMsg::Committed),
        Just(TargetMsg::Aborted),
        failure().prop_map(TargetMsg::Failed),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Invalid),
        Just(Outcome::Completed),
        failure().prop_map(|failure| Outcome::Refused { failure }),
        failure().prop_map(|failure| Outcome::RolledBack { failure }),
        (failure(), text()).prop_map(|(failure, rollback_error)| Outcome::Failed { failure, rollback_error }),
        (failure(), text()).prop_map(|(failure, detail)| Outcome::Undecided { failure, detail }),
    ]
}

fn round_report() -> impl Strategy<Value = RoundReport> {
    (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(round, pages, bytes, dump_ms, frozen_ms, transfer_ms, duration_ms, dirty_pages_per_s)| RoundReport {
            round,
            pages,
            bytes,
            dump_ms,
            frozen_ms,
            transfer_ms,
            duration_ms,
            dirty_pages_per_s,
        },
    )
}

fn report() -> impl Strategy<Value = MigrationReport> {
    let phases = vec((phase(), any::<u64>()).prop_map(|(phase, ms)| PhaseTime { phase, ms }), 0..3);
    let ram = (any::<bool>(), any::<bool>()).prop_map(|(source, target)| ImagesInRam { source, target });
    (
        (any::<u64>(), text(), text(), text(), mode(), outcome(), any::<Option<u64>>(), any::<u64>(), any::<u64>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), phases),
        (any::<Option<u64>>(), ram, vec(round_report(), 0..3), any::<Option<String>>(), texts(), steps()),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(|(a, b, c, (bandwidth, throttled_ms))| {
            let (id, container, source, target, mode, outcome, downtime_ms, total_ms, bytes_on_wire, image_bytes) = a;
            let (checkpoint_bytes, final_pages, final_frozen_ms, saved_bytes, zstd_in, zstd_out, phases) = b;
            let (memory_fill_ms, images_in_ram, rounds, stop_reason, warnings, frozen) = c;
            MigrationReport {
                id,
                container,
                source,
                target,
                mode,
                outcome,
                downtime_ms,
                total_ms,
                bytes_on_wire,
                image_bytes,
                checkpoint_bytes,
                final_pages,
                final_frozen_ms,
                saved_bytes,
                zstd_in,
                zstd_out,
                phases,
                frozen,
                memory_fill_ms,
                images_in_ram,
                rounds,
                stop_reason,
                warnings,
                bandwidth,
                throttled_ms,
            }
        })
}

pub fn migrate_event() -> impl Strategy<Value = MigrateEvent> {
    let progress =
        (phase(), any::<u64>(), any::<u64>(), text()).prop_map(|(phase, bytes, elapsed_ms, note)| Progress { phase, bytes, elapsed_ms, note });
    let refused = text().prop_map(|message| MigrateEvent::Refused(RemoteError { message }));
    prop_oneof![
        Just(MigrateEvent::Invalid),
        progress.prop_map(MigrateEvent::Progress),
        report().prop_map(MigrateEvent::Done),
        refused,
        text().prop_map(MigrateEvent::Notice)
    ]
}

pub fn coordinator_signal() -> impl Strategy<Value = CoordinatorSignal> {
    select(vec![CoordinatorSignal::Invalid, CoordinatorSignal::Cancel])
}

pub fn data_header() -> impl Strategy<Value = DataHeader> {
    let kind = prop_oneof![
        Just(DataKind::Invalid),
        Just(DataKind::Image),
        Just(DataKind::Checkpoint),
        any::<u32>().prop_map(DataKind::Round),
        any::<u32>().prop_map(|base| DataKind::CheckpointDelta { base }),
        Just(DataKind::Base),
    ];
    (any::<u64>(), kind).prop_map(|(id, kind)| DataHeader { id, kind })
}
