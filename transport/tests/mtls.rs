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
    TlsFiles::in_dir(dir, name)
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

/// Connects `client_name` to a server holding `server_name`'s certificate
/// and reports how it ended: `Ok` once the server accepted, else the error.
async fn try_connect(dir: &Path, server_name: &str, client_name: &str) -> Result<(), TransportError> {
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir, server_name)).unwrap();
    let addr = server.local_addr().unwrap();
    let accepted = tokio::spawn(async move { server.accept().await.unwrap().await.map(|c| peer_name(&c)) });
    let client = client_endpoint(&files(dir, client_name)).unwrap();
    let conn = connect(&client, addr, server_name).await?;
    match accepted.await.unwrap() {
        Ok(_) => Ok(()),
        Err(_) => Err(tern_transport::endpoint::classify(server_name, addr, conn.closed().await)),
    }
}

#[tokio::test]
async fn a_revoked_certificate_cannot_connect_either_way_and_others_still_can() {
    let dir = cluster();
    pki::issue(dir.path(), &host("c")).unwrap();
    assert!(try_connect(dir.path(), "a", "c").await.is_ok(), "an issued host connects");
    let serials = pki::revoke(dir.path(), "c", None).unwrap();
    assert_eq!(serials.len(), 1);
    assert!(dir.path().join("crl.pem").exists());
    let err = try_connect(dir.path(), "a", "c").await.unwrap_err();
    assert!(matches!(err, TransportError::Certificate { .. }), "{err}");
    let err = try_connect(dir.path(), "c", "coordinator").await.unwrap_err();
    assert!(matches!(err, TransportError::Certificate { .. }), "the revoked host as a server: {err}");
    assert!(try_connect(dir.path(), "a", "b").await.is_ok(), "others are not affected");
    // Re-issued, it is trusted again; revoking twice finds nothing more.
    pki::issue(dir.path(), &host("c")).unwrap();
    assert!(try_connect(dir.path(), "a", "c").await.is_ok());
    assert!(matches!(pki::revoke(dir.path(), "nobody", None), Err(PkiError::UnknownName(_))));
}

#[tokio::test]
async fn a_revocation_takes_effect_on_a_running_server_at_the_next_handshake() {
    let dir = cluster();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir.path(), "a")).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(i) = server.accept().await {
            if let Ok(c) = i.await {
                tokio::spawn(async move {
                    let _ = c.accept_bi().await;
                });
            }
        }
    });
    let client = client_endpoint(&files(dir.path(), "b")).unwrap();
    let first = connect(&client, addr, "a").await.unwrap();
    assert!(first.close_reason().is_none());
    pki::revoke(dir.path(), "b", None).unwrap();
    let err = match connect(&client, addr, "a").await {
        Err(e) => e,
        Ok(conn) => tern_transport::endpoint::classify("a", addr, conn.closed().await),
    };
    assert!(matches!(err, TransportError::Certificate { .. }), "{err}");
}

#[tokio::test]
async fn roles_are_in_the_certificates_and_a_certificate_without_one_is_refused() {
    let dir = cluster();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir.path(), "a")).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move { tern_transport::peer_identity(&server.accept().await.unwrap().await.unwrap()).unwrap() });
    let client = client_endpoint(&files(dir.path(), "coordinator")).unwrap();
    let conn = connect(&client, addr, "a").await.unwrap();
    assert_eq!(tern_transport::peer_identity(&conn).unwrap(), tern_transport::PeerId { name: "a".into(), role: tern_transport::Role::Host });
    assert_eq!(accept.await.unwrap().role, tern_transport::Role::Coordinator);

    // A certificate of the same CA, but made the old way (no role).
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca.key")).unwrap()).unwrap();
    let ca = rcgen::CertificateParams::from_ca_cert_pem(&std::fs::read_to_string(dir.path().join("ca.pem")).unwrap())
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "old");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.path().join("old.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("old.key"), key.serialize_pem()).unwrap();
    let e = tern_transport::endpoint::identity_of(cert.der()).unwrap_err();
    assert!(e.to_string().contains("tern pki issue old"), "{e}");
    let err = try_connect(dir.path(), "a", "old").await.unwrap_err();
    assert!(matches!(err, TransportError::Certificate { .. }), "{err}");
}

#[tokio::test]
async fn an_evacuator_certificate_is_a_client_only() {
    let dir = cluster();
    let files_written = pki::issue_evacuator(dir.path(), "a", 30).unwrap();
    assert!(files_written.iter().any(|f| f.ends_with("a.evacuator.pem")), "{files_written:?}");
    let mode = std::fs::metadata(dir.path().join("a.evacuator.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // As a client of b it is known as a, in the evacuator role.
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &files(dir.path(), "b")).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn(async move { tern_transport::peer_identity(&server.accept().await.unwrap().await.unwrap()).unwrap() });
    let client = client_endpoint(&files(dir.path(), "a.evacuator")).unwrap();
    connect(&client, addr, "b").await.unwrap();
    assert_eq!(accept.await.unwrap(), tern_transport::PeerId { name: "a".into(), role: tern_transport::Role::Evacuator });
    // It cannot serve as host a: it names no server.
    assert!(try_connect(dir.path(), "a.evacuator", "b").await.is_err());
    assert!(matches!(pki::issue_evacuator(dir.path(), "coordinator", 30), Err(PkiError::Reserved(_))));
}
