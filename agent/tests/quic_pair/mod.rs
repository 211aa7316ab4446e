//! Two QUIC endpoints on loopback with the cluster's mutual TLS, for the
//! tests that need a real connection between agents.

/// A connection from a client endpoint to a server endpoint, and the
/// server's side of it (kept: dropping it would close the connection).
pub async fn pair() -> (quinn::Connection, quinn::Connection, tempfile::TempDir, quinn::Endpoint, quinn::Endpoint) {
    let dir = tempfile::tempdir().unwrap();
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let hosts = ["a", "b"].map(|n| tern_transport::pki::HostSpec { name: n.into(), addresses: vec![local] });
    tern_transport::pki::init(dir.path(), &hosts, false).unwrap();
    let files = |n: &str| tern_transport::TlsFiles::in_dir(dir.path(), n);
    let server = tern_transport::server_endpoint("127.0.0.1:0".parse().unwrap(), &files("b")).unwrap();
    let client = tern_transport::server_endpoint("127.0.0.1:0".parse().unwrap(), &files("a")).unwrap();
    let addr = server.local_addr().unwrap();
    let accept = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.unwrap().await.unwrap() }
    });
    let conn = tern_transport::connect(&client, addr, "b").await.unwrap();
    let theirs = accept.await.unwrap();
    (conn, theirs, dir, server, client)
}
