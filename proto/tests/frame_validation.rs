//! Hostile and malformed frames give errors, never panics or huge allocations.

use tern_proto::compat::{Finding, Severity};
use tern_proto::facts::{Capability, CgroupsVersion, ContainerInfo, HostFacts};
use tern_proto::frame::{decode, encode, read_frame, write_frame, FrameError};
use tern_proto::*;

fn facts() -> HostFacts {
    HostFacts {
        name: "client1".into(),
        agent_version: "0.1.0".into(),
        podman_version: "4.3.1".into(),
        runtime_name: "runc".into(),
        runtime_version: "1.1.5".into(),
        criu_version: "4.2.1".into(),
        cgroups: CgroupsVersion::Hybrid,
        kernel: "6.18.44".into(),
        arch: "x86_64".into(),
        cpu_flags: vec!["fpu".into(), "sse2".into()],
        network_backend: "netavark".into(),
        dirty_tracking: Capability { supported: false, detail: "off".into() },
        lazy_restore: Capability { supported: true, detail: "uffd".into() },
        dump_other_users: Capability { supported: true, detail: String::new() },
        status: tern_proto::facts::HostStatus {
            cordon: Some(tern_proto::facts::Cordon { reason: "kernel upgrade".into(), since_unix: 1_700_000_000 }),
            memory_available_bytes: 3 << 30,
            disk_available_bytes: 20 << 30,
            bandwidth_cap: 62_500_000,
        },
    }
}

fn container() -> ContainerInfo {
    ContainerInfo {
        files_bytes: 0,
        volumes: vec![],
        name: "demo1".into(),
        id: "abc".into(),
        image: "localhost/tern-busybox:latest".into(),
        image_id: "sha256:1".into(),
        state: "running".into(),
        ips: vec!["203.0.113.5".parse().unwrap()],
        memory_bytes: 64 << 20,
        pid: 4242,
        networks: vec![tern_proto::facts::Attachment {
            network: "lan".into(),
            driver: "macvlan".into(),
            ips: vec!["203.0.113.5".parse().unwrap()],
            mac: "ea:be:23:08:73:8e".into(),
        }],
        ports: vec![tern_proto::facts::PublishedPort { host_ip: String::new(), host_port: 8080, container_port: 80, protocol: "tcp".into() }],
        connections: vec![tern_proto::facts::TcpConnection {
            local: "203.0.113.5:80".parse().unwrap(),
            remote: "198.51.100.10:40000".parse().unwrap(),
        }],
        process_uids: vec![999],
        systemd_unit: None,
        pod: None,
        dependencies: vec![],
    }
}

fn samples() -> Vec<Request> {
    vec![
        Request::Hello(Hello { version: 1, supported: vec![1], name: "coordinator".into(), software: "tern 0.1".into() }),
        Request::Facts,
        Request::Containers,
        Request::CheckIncoming(container()),
        Request::Migrate(MigrateRequest {
            id: 42,
            container: "demo1".into(),
            target: Peer { name: "client2".into(), address: "192.0.2.12:7443".into() },
            options: MigrateOptions {
                mode: Mode::PreCopy,
                compress: Compression::Zstd,
                tcp_established: true,
                allow_reset: false,
                policy: tern_proto::policy::PolicyConfig::default(),
                lazy_restore: false,
                bandwidth: 25_000_000,
                post_copy_first: tern_proto::plan::PostCopyFirst::Nothing,
            },
            ticket: tern_proto::Ticket::default(),
            evacuation: true,
        }),
        Request::Receive(Begin {
            id: 42,
            source: "client1".into(),
            container: container(),
            tcp_established: false,
            mode: Mode::HashPreCopy,
            lazy_restore: true,
            post_copy_first: tern_proto::plan::PostCopyFirst::Nothing,
            ticket: tern_proto::Ticket::default(),
        }),
        Request::Resolve(ResolveRequest { id: 7, container: "demo1".into(), container_id: "abc".into(), verdict: Verdict::Abort }),
        Request::Cordon(CordonRequest { cordon: Some("kernel upgrade".into()) }),
        Request::Cordon(CordonRequest { cordon: None }),
        Request::Evacuation(EvacuationRequest { forget: vec![] }),
        Request::Evacuation(EvacuationRequest { forget: vec!["abc".into()] }),
    ]
}

#[test]
fn every_request_round_trips() {
    for msg in samples() {
        let buf = encode(&msg).unwrap();
        let (back, used): (Request, usize) = decode(&buf).unwrap().unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, buf.len());
    }
}

#[test]
fn responses_and_reports_round_trip() {
    let report = MigrationReport {
        id: 1,
        container: "demo1".into(),
        source: "client1".into(),
        target: "client2".into(),
        mode: Mode::StopAndCopy,
        outcome: Outcome::RolledBack { failure: Failure { phase: Phase::Restore, message: "boom".into() } },
        downtime_ms: Some(812),
        total_ms: 1400,
        bytes_on_wire: 123_456,
        image_bytes: 0,
        checkpoint_bytes: 120_000,
        final_pages: 30,
        final_frozen_ms: 120,
        saved_bytes: 4096,
        zstd_in: 8192,
        zstd_out: 1024,
        phases: vec![PhaseTime { phase: Phase::Checkpoint, ms: 500 }],
        frozen: vec![StepTime { step: FrozenStep::CriuDump, ms: 120 }, StepTime { step: FrozenStep::Other, ms: 692 }],
        memory_fill_ms: Some(390),
        images_in_ram: ImagesInRam { source: true, target: false },
        rounds: vec![RoundReport {
            round: 1,
            pages: 65_536,
            bytes: 256 << 20,
            dump_ms: 900,
            frozen_ms: 80,
            transfer_ms: 2_500,
            duration_ms: 3_400,
            dirty_pages_per_s: 0,
        }],
        stop_reason: Some("converged".into()),
        warnings: vec![],
        bandwidth: 25_000_000,
        throttled_ms: 1_200,
    };
    let msgs = vec![
        Response::Facts(facts()),
        Response::Containers(vec![container()]),
        Response::Resolved(Resolution::Kept),
        Response::Resolved(Resolution::Busy),
        Response::Evacuation(tern_proto::EvacuationRecord {
            containers: vec![tern_proto::Evacuated { name: "a".into(), id: "1".into(), target: "client2".into(), migration: 9, moved_unix: 5 }],
        }),
        Response::Cordon(CordonChange { was: None, now: Some(tern_proto::facts::Cordon { reason: "r".into(), since_unix: 5 }) }),
        Response::IncomingCheck(vec![Finding {
            field: "image".into(),
            source: "x".into(),
            target: "missing".into(),
            severity: Severity::Warn,
            note: "shipped".into(),
        }]),
        Response::Error(RemoteError { message: "no".into() }),
    ];
    for msg in msgs {
        let buf = encode(&msg).unwrap();
        assert_eq!(decode::<Response>(&buf).unwrap().unwrap().0, msg);
    }
    let ev = MigrateEvent::Done(report);
    assert_eq!(decode::<MigrateEvent>(&encode(&ev).unwrap()).unwrap().unwrap().0, ev);
}

#[test]
fn partial_frames_wait_for_more() {
    let buf = encode(&Request::Facts).unwrap();
    for cut in 0..buf.len() {
        assert!(decode::<Request>(&buf[..cut]).unwrap().is_none(), "cut at {cut}");
    }
}

#[test]
fn oversized_length_prefix_is_refused_before_allocating() {
    let mut buf = (u32::MAX).to_be_bytes().to_vec();
    buf.extend_from_slice(&[1, 2, 3]);
    assert!(matches!(decode::<Request>(&buf), Err(FrameError::TooLarge { .. })));
    let just_over = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    assert!(matches!(decode::<Request>(&just_over), Err(FrameError::TooLarge { .. })));
}

#[test]
fn trailing_bytes_inside_a_frame_are_refused() {
    let buf = [0, 0, 0, 2, 2, 9]; // Facts, then a stray byte
    assert!(matches!(decode::<Request>(&buf), Err(FrameError::Trailing(1))));
}

#[test]
fn zero_variant_is_invalid() {
    // A frame holding the single byte 0 decodes to variant 0: Invalid.
    let buf = [0, 0, 0, 1, 0];
    assert!(matches!(decode::<Request>(&buf), Err(FrameError::Invalid("Request"))));
    assert!(matches!(decode::<SourceMsg>(&buf), Err(FrameError::Invalid("SourceMsg"))));
}

#[test]
fn hostile_inner_lengths_error_out() {
    // Variant CheckIncoming (4) followed by a string length of ~2^63.
    let mut payload = vec![4u8];
    payload.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(&payload);
    assert!(matches!(decode::<Request>(&buf), Err(FrameError::Decode(_))));
    // Containers response claiming 2^32 entries with no bytes behind them.
    let payload = [3u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(&payload);
    assert!(matches!(decode::<Response>(&buf), Err(FrameError::Decode(_))));
}

#[test]
fn garbage_never_panics() {
    // A deterministic pseudo-random walk over many inputs.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in 0..2000usize {
        let mut payload = Vec::with_capacity(len % 300);
        for _ in 0..(len % 300) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            payload.push(x as u8);
        }
        let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&payload);
        let _ = decode::<Request>(&buf);
        let _ = decode::<Response>(&buf);
        let _ = decode::<MigrateEvent>(&buf);
        let _ = decode::<SourceMsg>(&buf);
        let _ = decode::<TargetMsg>(&buf);
    }
}

#[tokio::test]
async fn async_helpers_round_trip_and_detect_truncation() {
    let (mut a, mut b) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for m in samples() {
            write_frame(&mut a, &m).await.unwrap();
        }
    });
    for m in samples() {
        let got: Request = read_frame(&mut b).await.unwrap().unwrap();
        assert_eq!(got, m);
    }
    writer.await.unwrap();
    assert!(read_frame::<_, Request>(&mut b).await.unwrap().is_none());

    let buf = encode(&Request::Containers).unwrap();
    let mut short = &buf[..buf.len() - 1];
    let mut short2 = &buf[..2];
    assert!(matches!(read_frame::<_, Request>(&mut short).await, Err(FrameError::Truncated)));
    assert!(matches!(read_frame::<_, Request>(&mut short2).await, Err(FrameError::Truncated)));
}

#[test]
fn precopy_messages_and_data_headers_round_trip() {
    let d = Digest { bytes: 9, blake3: [3; 32] };
    for msg in [SourceMsg::RoundSent { round: 3, digest: d }, SourceMsg::CheckpointSent(d), SourceMsg::Abort { reason: "x".into() }] {
        assert_eq!(decode::<SourceMsg>(&encode(&msg).unwrap()).unwrap().unwrap().0, msg);
    }
    for msg in [TargetMsg::RoundStored { round: 3 }, TargetMsg::Ready { needs_image: true }] {
        assert_eq!(decode::<TargetMsg>(&encode(&msg).unwrap()).unwrap().unwrap().0, msg);
    }
    for kind in [DataKind::Image, DataKind::Checkpoint, DataKind::Round(7), DataKind::CheckpointDelta { base: 1 }] {
        let h = DataHeader { id: 5, kind };
        assert_eq!(decode::<DataHeader>(&encode(&h).unwrap()).unwrap().unwrap().0, h);
    }
    // The reserved kind never decodes into a header.
    let bad = encode(&DataHeader { id: 5, kind: DataKind::Invalid });
    assert!(bad.is_err() || decode::<DataHeader>(&bad.unwrap()).is_err());
}
