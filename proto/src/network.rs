//! A container's network identity, and which of its connections survive a
//! move. The identity as the agent reports it (the networks it is attached
//! to, its published ports, its connections) is part of
//! [`ContainerInfo`] (`facts.rs`); the rules and parsers are here.
//!
//! A container keeps its address and MAC across a migration (Podman restores
//! both) and CRIU's TCP repair restores its sockets with their sequence
//! numbers. Whether a peer's connection then carries on depends on the
//! network, not on tern:
//!
//! | network                | the container's address on the target          | connections with other hosts |
//! |------------------------|------------------------------------------------|------------------------------|
//! | macvlan / ipvlan       | on the shared segment, announced by tern       | kept                         |
//! | bridge (Podman's NAT)  | behind the target's masquerade                 | lost: the target rewrites the restored socket's packets to its own address (it has no conntrack entry for them) and the peer answers with a reset |
//! | a published port       | the host's address, which does not move        | lost                         |
//! | host network / none    | the host's own                                 | lost                         |
//!
//! Connections whose both ends are inside the container (loopback, or the
//! container's own addresses) move with it whatever the network.
//! [`fate`] decides per connection; [`connections_finding`] turns that into
//! the compatibility report's row; the agents read the inputs
//! ([`parse_proc_net_tcp`] on `/proc/PID/net/tcp*`).

use crate::compat::{Finding, Severity};
use crate::facts::{ContainerInfo, TcpConnection};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A network as a host defines it (what the target checks an incoming
/// container's attachments against).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    pub name: String,
    pub driver: String,
    /// Its subnets, as `address/prefix`.
    pub subnets: Vec<String>,
    /// The host interface it sits on: the bridge Podman made, or the
    /// parent of a macvlan or ipvlan network.
    pub interface: String,
}

/// Whether a network driver puts the container's own address on a network
/// that reaches other hosts without address translation, so that the
/// address (and connections to it) can move to another host on it.
pub fn driver_keeps_address(driver: &str) -> bool {
    matches!(driver, "macvlan" | "ipvlan")
}

/// What a migration does to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Both ends are in the container: they move together.
    Internal,
    /// The peer is elsewhere and the network carries the address over.
    Kept,
    /// The peer will see it reset or hang, and why.
    Lost(String),
}

/// What becomes of `conn` when `c` moves to another host.
pub fn fate(c: &ContainerInfo, conn: &TcpConnection) -> Fate {
    let own = |ip: &IpAddr| ip.is_loopback() || c.ips.contains(ip) || c.networks.iter().any(|n| n.ips.contains(ip));
    if own(&conn.remote.ip()) {
        return Fate::Internal;
    }
    let published = c.ports.iter().find(|p| p.protocol == "tcp" && p.container_port == conn.local.port());
    let net = c.networks.iter().find(|n| n.ips.contains(&conn.local.ip()));
    match net {
        Some(n) if driver_keeps_address(&n.driver) => Fate::Kept,
        Some(n) => Fate::Lost(match published {
            Some(p) => format!("{} reached it through the published port {} of its host, whose address does not move", conn.remote, p.host_port),
            None => format!(
                "{} reaches it on the {} network {}, which source-NATs its traffic: the target would rewrite the restored \
                 connection's packets to its own address",
                conn.remote, n.driver, n.network
            ),
        }),
        None => Fate::Lost(format!(
            "{} reaches it on {}, an address of no Podman network of the container (host network?), which does not move",
            conn.remote,
            conn.local.ip()
        )),
    }
}

/// The compatibility row for a container's established connections.
/// `allow_reset`: the user accepts that connections which cannot survive
/// are reset (`--allow-reset`); otherwise they block the move.
pub fn connections_finding(c: &ContainerInfo, allow_reset: bool) -> Finding {
    let field = "tcp connections";
    let fates: Vec<(&TcpConnection, Fate)> = c.connections.iter().map(|t| (t, fate(c, t))).collect();
    let internal = fates.iter().filter(|(_, f)| *f == Fate::Internal).count();
    let outside: Vec<String> = fates.iter().filter(|(_, f)| *f != Fate::Internal).map(|(t, _)| t.remote.to_string()).collect();
    let lost: Vec<&String> = fates.iter().filter_map(|(_, f)| if let Fate::Lost(why) = f { Some(why) } else { None }).collect();
    let source = match (c.connections.len(), internal) {
        (0, _) => "none".to_string(),
        (n, 0) => format!("{n} established: {}", shorten(&outside, 4)),
        (n, i) if i == n => format!("{n} established, all inside the container"),
        (n, i) => format!("{n} established: {} ({i} inside the container)", shorten(&outside, 4)),
    };
    let (target, severity, note) = if c.connections.is_empty() {
        (String::new(), Severity::Ok, String::new())
    } else if lost.is_empty() {
        ("kept (TCP repair, address announced)".to_string(), Severity::Ok, String::new())
    } else {
        let reason = format!("{} of them would be reset: {}", lost.len(), lost.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join("; "));
        if allow_reset {
            (format!("{} lost", lost.len()), Severity::Warn, format!("{reason}; going ahead as --allow-reset says"))
        } else {
            (
                format!("{} lost", lost.len()),
                Severity::Block,
                format!(
                    "{reason}. To keep them, attach the container to a network that carries its address to the target \
                     (a macvlan or ipvlan network, README \"Networks\"); to move it anyway and let them reset, pass --allow-reset"
                ),
            )
        }
    };
    Finding { field: field.into(), source, target, severity, note }
}

fn shorten(items: &[String], n: usize) -> String {
    let mut s = items.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > n {
        s.push_str(&format!(" and {} more", items.len() - n));
    }
    s
}

/// The target's rows for an incoming container's networks: each must exist
/// here by name, with the same driver and a subnet holding its address.
pub fn networks_finding(c: &ContainerInfo, here: &[NetworkDef]) -> Option<Finding> {
    if c.networks.is_empty() {
        return None;
    }
    let names: Vec<String> = c.networks.iter().map(|n| format!("{} ({})", n.network, n.driver)).collect();
    let f = Finding::new("networks", names.join(", "), "");
    for a in &c.networks {
        let Some(def) = here.iter().find(|d| d.name == a.network) else {
            return Some(Finding { target: format!("{} missing", a.network), ..f }.with(
                Severity::Block,
                format!(
                    "the container is attached to network {} and this host has none of that name; create it here \
                     as on the source (same driver and subnet, its own range of addresses: README \"Networks\")",
                    a.network
                ),
            ));
        };
        if def.driver != a.driver {
            return Some(Finding { target: format!("{} is {}", def.name, def.driver), ..f }.with(
                Severity::Block,
                format!(
                    "network {} is {} on the source and {} here; Podman restores the container on the same kind",
                    a.network, a.driver, def.driver
                ),
            ));
        }
        if let Some(ip) = a.ips.iter().find(|ip| !def.subnets.iter().any(|s| subnet_contains(s, ip))) {
            return Some(Finding { target: format!("{} is {}", def.name, def.subnets.join(",")), ..f }.with(
                Severity::Block,
                format!(
                    "the container keeps its address {ip}, which is outside network {}'s subnets here ({}); give the \
                     network the same subnet on both hosts",
                    a.network,
                    def.subnets.join(", ")
                ),
            ));
        }
    }
    let keeps = c.networks.iter().all(|n| driver_keeps_address(&n.driver));
    let target = if keeps { "present; the address moves" } else { "present" };
    Some(Finding { target: target.into(), ..f })
}

/// The target's row for the host ports published to an incoming container:
/// each must be free here, and its clients must use this host afterwards.
/// `listening`: (protocol, port) pairs this host already listens on.
pub fn ports_finding(c: &ContainerInfo, listening: &[(String, u16)], source_host: &str, target_host: &str) -> Option<Finding> {
    if c.ports.is_empty() {
        return None;
    }
    let shown: Vec<String> = c.ports.iter().map(|p| format!("{}:{}/{}", p.host_port, p.container_port, p.protocol)).collect();
    let f = Finding::new("published ports", shown.join(","), "");
    let taken: Vec<String> = c
        .ports
        .iter()
        .filter(|p| listening.iter().any(|(proto, port)| *proto == p.protocol && *port == p.host_port))
        .map(|p| format!("{}/{}", p.host_port, p.protocol))
        .collect();
    if !taken.is_empty() {
        return Some(Finding { target: format!("{} in use", taken.join(",")), ..f }.with(
            Severity::Block,
            format!(
                "port {} is already in use on {target_host}, where the container's published ports would be bound; \
                 free it there or move the container elsewhere",
                taken.join(", ")
            ),
        ));
    }
    let ports: Vec<String> = c.ports.iter().map(|p| p.host_port.to_string()).collect();
    Some(Finding { target: "free".into(), ..f }.with(
        Severity::Warn,
        format!(
            "clients that reach it through {source_host}'s port {} must use {target_host}'s afterwards: a host's \
             address does not move with the container (a macvlan or ipvlan network gives the container an address \
             that does: README \"Networks\")",
            ports.join(", ")
        ),
    ))
}

/// Whether `cidr` (`198.51.100.0/24`, `fd00::/64`) holds `ip`.
pub fn subnet_contains(cidr: &str, ip: &IpAddr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else { return false };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else { return false };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(*a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if len <= 128 => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(n) & mask == u128::from(*a) & mask
        }
        _ => false,
    }
}

/// Linux's TCP states in `/proc/net/tcp` (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_LISTEN: u8 = 10;

/// One socket line of `/proc/PID/net/tcp` or `tcp6`: local and remote
/// address and the state. Lines that do not parse are skipped: the file is
/// the kernel's, but a partial read must not fail a migration.
pub fn parse_proc_net_tcp(text: &str) -> Vec<(SocketAddr, SocketAddr, u8)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1);
            let local = parse_hex_addr(f.next()?)?;
            let remote = parse_hex_addr(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            Some((local, remote, state))
        })
        .collect()
}

/// The established connections in a `/proc/net/tcp*` text.
pub fn established(text: &str) -> Vec<TcpConnection> {
    parse_proc_net_tcp(text).into_iter().filter(|(_, _, s)| *s == TCP_ESTABLISHED).map(|(local, remote, _)| TcpConnection { local, remote }).collect()
}

/// The ports listened on in a `/proc/net/tcp*` text.
pub fn listening_ports(text: &str) -> Vec<u16> {
    parse_proc_net_tcp(text).into_iter().filter(|(_, _, s)| *s == TCP_LISTEN).map(|(l, _, _)| l.port()).collect()
}

/// The (protocol, port) pairs a host's sockets hold, from its
/// `/proc/net/tcp*` and `/proc/net/udp*` texts: TCP listeners and UDP
/// sockets bound but not connected.
pub fn ports_in_use(tcp: &str, udp: &str) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = listening_ports(tcp).into_iter().map(|p| ("tcp".to_string(), p)).collect();
    out.extend(parse_proc_net_tcp(udp).into_iter().filter(|(_, r, _)| r.port() == 0).map(|(l, _, _)| ("udp".to_string(), l.port())));
    out.sort();
    out.dedup();
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel
/// prints each 32-bit word of the address in host byte order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // A v4 peer of a dual-stack socket: show it as v4.
            v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Attachment, PublishedPort};

    fn ctr(driver: &str) -> ContainerInfo {
        let ip: IpAddr = "198.51.100.130".parse().unwrap();
        ContainerInfo {
            name: "redis".into(),
            id: "0123456789abcdef".into(),
            image: "localhost/tern-redis:latest".into(),
            image_id: "sha256:1".into(),
            state: "running".into(),
            ips: vec![ip],
            memory_bytes: 0,
            files_bytes: 0,
            volumes: vec![],
            pid: 42,
            networks: vec![Attachment { network: "lan".into(), driver: driver.into(), ips: vec![ip], mac: String::new() }],
            ports: vec![],
            connections: vec![],
            process_uids: vec![],
            systemd_unit: None,
            pod: None,
            dependencies: vec![],
        }
    }

    fn conn(local: &str, remote: &str) -> TcpConnection {
        TcpConnection { local: local.parse().unwrap(), remote: remote.parse().unwrap() }
    }

    #[test]
    fn reads_the_kernels_socket_table() {
        // Real lines (trimmed) from a container running redis with a client.
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:18EB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
           1: 826433C6:18EB 0A6433C6:D3E6 01 00000000:00000000 02:000A1F38 00000000     0        0 2 1 0 20 4 30 10 -1\n\
           2: 0100007F:A000 0100007F:18EB 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1\n\
           garbage line\n";
        let est = established(v4);
        assert_eq!(est, vec![conn("198.51.100.130:6379", "198.51.100.10:54246"), conn("127.0.0.1:40960", "127.0.0.1:6379")]);
        assert_eq!(listening_ports(v4), vec![6379]);
        let v6 = "  sl  local_address                         remote_address                        st\n\
           0: 0000000000000000FFFF0000826433C6:18EB 0000000000000000FFFF00000A6433C6:D3E6 01 0\n\
           1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(established(v6), vec![conn("198.51.100.130:6379", "198.51.100.10:54246")]);
        assert_eq!(listening_ports(v6), vec![80]);
        assert!(parse_proc_net_tcp("").is_empty());
        let udp = "  sl  local_address rem_address   st\n\
           1: 0B6433C6:1D13 00000000:0000 07 0\n\
           2: 0B6433C6:C000 0A6433C6:0035 01 0\n";
        assert_eq!(ports_in_use(v4, udp), vec![("tcp".to_string(), 6379), ("udp".to_string(), 7443)]);
    }

    #[test]
    fn connections_survive_on_macvlan_and_not_through_nat() {
        let mut c = ctr("macvlan");
        c.connections = vec![conn("198.51.100.130:6379", "198.51.100.10:54246"), conn("127.0.0.1:40960", "127.0.0.1:6379")];
        assert_eq!(fate(&c, &c.connections[0]), Fate::Kept);
        assert_eq!(fate(&c, &c.connections[1]), Fate::Internal);
        let f = connections_finding(&c, false);
        assert_eq!(f.severity, Severity::Ok, "{f:?}");
        assert!(f.source.contains("198.51.100.10:54246") && f.source.contains("1 inside"), "{}", f.source);

        let mut nat = ctr("bridge");
        nat.connections = c.connections.clone();
        assert!(matches!(fate(&nat, &nat.connections[0]), Fate::Lost(_)));
        let f = connections_finding(&nat, false);
        assert_eq!(f.severity, Severity::Block);
        assert!(f.note.contains("--allow-reset") && f.note.contains("macvlan"), "{}", f.note);
        let f = connections_finding(&nat, true);
        assert_eq!(f.severity, Severity::Warn);
        assert_eq!(f.target, "1 lost");

        // A client of a published port: named as such.
        nat.ports = vec![PublishedPort { host_ip: String::new(), host_port: 8080, container_port: 6379, protocol: "tcp".into() }];
        match fate(&nat, &nat.connections[0]) {
            Fate::Lost(why) => assert!(why.contains("published port 8080"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The container's own address as peer: both ends move.
        let own = conn("198.51.100.130:6379", "198.51.100.130:40000");
        assert_eq!(fate(&nat, &own), Fate::Internal);
        // No network of its own (host network): lost.
        let mut host = ctr("bridge");
        host.networks.clear();
        host.ips.clear();
        assert!(matches!(fate(&host, &conn("198.51.100.11:6379", "198.51.100.10:1")), Fate::Lost(_)));
        // No connections: nothing to say.
        assert_eq!(connections_finding(&ctr("bridge"), false).severity, Severity::Ok);
    }

    #[test]
    fn the_target_must_have_the_network_with_the_address_in_it() {
        let c = ctr("macvlan");
        let lan = |driver: &str, subnet: &str| {
            vec![NetworkDef { name: "lan".into(), driver: driver.into(), subnets: vec![subnet.into()], interface: "eth0".into() }]
        };
        assert_eq!(networks_finding(&c, &lan("macvlan", "198.51.100.0/24")).unwrap().severity, Severity::Ok);
        assert_eq!(networks_finding(&c, &[]).unwrap().severity, Severity::Block);
        assert_eq!(networks_finding(&c, &lan("bridge", "198.51.100.0/24")).unwrap().severity, Severity::Block);
        let f = networks_finding(&c, &lan("macvlan", "203.0.113.0/24")).unwrap();
        assert_eq!(f.severity, Severity::Block);
        assert!(f.note.contains("198.51.100.130"), "{}", f.note);
        let mut none = c.clone();
        none.networks.clear();
        assert!(networks_finding(&none, &[]).is_none());
    }

    #[test]
    fn published_ports_must_be_free_and_clients_are_told() {
        let mut c = ctr("bridge");
        c.ports = vec![PublishedPort { host_ip: String::new(), host_port: 8080, container_port: 6379, protocol: "tcp".into() }];
        let f = ports_finding(&c, &[("tcp".into(), 22)], "client1", "client2").unwrap();
        assert_eq!(f.severity, Severity::Warn);
        assert!(f.note.contains("client2's"), "{}", f.note);
        let f = ports_finding(&c, &[("tcp".into(), 8080)], "client1", "client2").unwrap();
        assert_eq!(f.severity, Severity::Block);
        // The same port number in UDP is no clash.
        assert_eq!(ports_finding(&c, &[("udp".into(), 8080)], "a", "b").unwrap().severity, Severity::Warn);
        c.ports.clear();
        assert!(ports_finding(&c, &[], "a", "b").is_none());
    }

    #[test]
    fn subnets_hold_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(subnet_contains("198.51.100.0/24", &ip("198.51.100.200")));
        assert!(!subnet_contains("198.51.100.128/28", &ip("198.51.100.200")));
        assert!(subnet_contains("0.0.0.0/0", &ip("1.2.3.4")));
        assert!(subnet_contains("fd00::/64", &ip("fd00::1")));
        assert!(!subnet_contains("fd00::/64", &ip("198.51.100.1")));
        for bad in ["", "198.51.100.0", "198.51.100.0/33", "x/24"] {
            assert!(!subnet_contains(bad, &ip("198.51.100.1")), "{bad}");
        }
    }
}
