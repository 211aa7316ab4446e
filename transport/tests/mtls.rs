//! Mutual TLS over QUIC on loopback: who is let in, who is not, and why.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;
use tern_transport::pki::{self, HostSpec, PkiError};
use tern_transport::{client_endpoint, connect, peer_name, server_endpoint, TlsFiles, TransportError};

fn host(name: &str) -> HostSpec {
    HostSpec { name: name.into(), addresses: vec!["127.0.0.1".parse::<IpAddr>().unwrap()] }
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
}

/// Accepts (and completes handshakes of) every incoming connection.
fn serve(server: quinn::Endpoint) {
    tokio::spawn(async move {
        while let Some(i) = server.accept().await {
            let _ = i.await;
        }
    });
}

fn cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki::init(dir.path(), &[host("a"), host("b")], false).unwrap();
    dir
}

#[test]
fn init_writes_private_keys_and_refuses_to_replace_the_ca() {
    let dir = cluster();
    for f in ["ca.pem", "ca.key", "a.pem", "a.key", "b.pem", "b.key", "coordinator.pem", "coordinator.key"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    for f in ["ca.key", "a.key", "coordinator.key"] {
        let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert!(matches!(pki::init(dir.path(), &[host("a")], false), Err(PkiError::Exists(_))));
    assert!(pki::init(dir.path(), &[host("a")], true).is_ok());
    assert!(matches!(pki::init(dir.path(), &[host("bad name")], true), Err(PkiError::BadName(_))));
}

#[tokio::test]
async fn same_ca_connects_and_both_sides_know_who_the_other_is() {
    let dir = cluster();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir.path(), "a")).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let got = recv.read_to_end(1024).await.unwrap();
        send.write_all(&got).await.unwrap();
        send.finish().unwrap();
        let _ = send.stopped().await;
        peer_name(&conn)
    });
    let client = client_endpoint(&files(dir.path(), "coordinator")).unwrap();
    let conn = connect(&client, addr, "a").await.unwrap();
    assert_eq!(peer_name(&conn).as_deref(), Some("a"));
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(b"hello").await.unwrap();
    send.finish().unwrap();
    assert_eq!(recv.read_to_end(1024).await.unwrap(), b"hello");
    assert_eq!(accept.await.unwrap().as_deref(), Some("coordinator"));
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let ours = cluster();
    let theirs = cluster();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(ours.path(), "a")).unwrap();
    let addr = server.local_addr().unwrap();
    serve(server);
    // The stranger's client trusts our CA (so its own check passes) but
    // presents a certificate from its own CA: the server must refuse it.
    let mixed = TlsFiles { ca: ours.path().join("ca.pem"), ..files(theirs.path(), "coordinator") };
    let client = client_endpoint(&mixed).unwrap();
    let err = match connect(&client, addr, "a").await {
        Err(e) => e,
        Ok(conn) => {
            // TLS 1.3: the refusal may arrive just after the handshake.
            let r = conn.closed().await;
            tern_transport::endpoint::classify("a", addr, r)
        }
    };
    assert!(matches!(err, TransportError::Certificate { .. }), "{err}");
    assert!(err.to_string().contains("cluster CA"), "{err}");
}

#[tokio::test]
async fn a_server_from_another_ca_is_not_trusted() {
    let ours = cluster();
    let theirs = cluster();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(theirs.path(), "a")).unwrap();
    let addr = server.local_addr().unwrap();
    serve(server);
    let client = client_endpoint(&files(ours.path(), "coordinator")).unwrap();
    let err = connect(&client, addr, "a").await.unwrap_err();
    assert!(matches!(err, TransportError::Certificate { .. }), "{err}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_not_accepted() {
    let dir = cluster();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir.path(), "b")).unwrap();
    let addr = server.local_addr().unwrap();
    serve(server);
    let client = client_endpoint(&files(dir.path(), "coordinator")).unwrap();
    // We expect "a" at that address, but "b" answers.
    let err = connect(&client, addr, "a").await.unwrap_err();
    assert!(matches!(err, TransportError::Certificate { .. }), "{err}");
}

#[test]
fn missing_files_name_the_fix() {
    let err = client_endpoint(&files(Path::new("/nonexistent"), "x")).unwrap_err().to_string();
    assert!(err.contains("tern pki init"), "{err}");
}

#[test]
fn issue_adds_a_host_to_an_existing_ca() {
    let dir = cluster();
    pki::issue(dir.path(), &host("c")).unwrap();
    assert!(dir.path().join("c.pem").exists());
}

#[tokio::test]
async fn issued_certificate_is_trusted() {
    let dir = cluster();
    pki::issue(dir.path(), &host("c")).unwrap();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir.path(), "c")).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let _ = conn.closed().await;
    });
    let client = client_endpoint(&files(dir.path(), "a")).unwrap();
    let conn = connect(&client, addr, "c").await.unwrap();
    assert_eq!(peer_name(&conn).as_deref(), Some("c"));
}

#[tokio::test]
async fn bulk_transfer_of_64_mib() {
    const SIZE: usize = 64 << 20;
    let dir = cluster();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir.path(), "a")).unwrap();
    let addr = server.local_addr().unwrap();
    let recv_task = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let mut recv = conn.accept_uni().await.unwrap();
        let mut total = 0usize;
        while let Some(c) = recv.read_chunk(1 << 20, true).await.unwrap() {
            total += c.bytes.len();
        }
        total
    });
    let client = client_endpoint(&files(dir.path(), "b")).unwrap();
    let conn = connect(&client, addr, "a").await.unwrap();
    let start = Instant::now();
    let mut send = conn.open_uni().await.unwrap();
    let buf = vec![7u8; 1 << 20];
    for _ in 0..SIZE / buf.len() {
        send.write_all(&buf).await.unwrap();
    }
    send.finish().unwrap();
    assert_eq!(recv_task.await.unwrap(), SIZE);
    let secs = start.elapsed().as_secs_f64();
    eprintln!("64 MiB over loopback QUIC: {:.2} s, {:.0} MiB/s", secs, 64.0 / secs);
}
