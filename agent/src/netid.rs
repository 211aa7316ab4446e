//! A container's network identity where it now runs.
//!
//! While a container is restored on a host, packets for its addresses are
//! **held** (dropped) at that host's NIC, until CRIU has restored its
//! sockets ([`Hold`]). Once it runs there (the target after a migration, or
//! the source again after a rollback), three things make its address and
//! its connections follow it, in this order:
//!
//! 1. **Announce** the address on the segment from inside the container's
//!    network namespace: a gratuitous ARP per IPv4 address and an
//!    unsolicited neighbour advertisement per IPv6 address, twice at once
//!    and once more a second later. Switches learn the MAC on the new port;
//!    neighbours refresh their caches.
//! 2. **Wake** every peer of a restored TCP connection: a peer whose
//!    segments were dropped during the freeze waits in retransmission
//!    backoff; a few ICMP "host unreachable" messages quoting its oldest
//!    unacknowledged byte make it retransmit now (`tern_proto::packets`).
//!    The byte is the restored socket's `rcv_nxt`, read from CRIU's images.
//! 3. **The hook** (agent config `[network] hook`), for what a segment
//!    announcement cannot do: a router's API, a BGP speaker, a cloud's
//!    secondary-address call. It runs with a time limit. On the target it
//!    runs after the checkpoint arrived and before the restore (inside the
//!    downtime: keep it quick), so that its failure rolls the migration
//!    back before the container has said anything from the target.
//!
//! The source needs no step of its own at the freeze: the dump stops the
//! container and Podman tears its network namespace down, so nothing there
//! answers for the address any more (no ARP reply, no reset). Its hook runs
//! with `TERN_EVENT=departed` for deployments that withdraw a route. A copy
//! that must not run on is **silenced** before it is removed ([`silence`]).
//! After a dump that leaves the container running (content-addressed
//! pre-copy's base), its peers are woken where it is ([`wake_only`]).

use crate::criu_tcp::CriuTcpError;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tern_proto::packets;

/// What can go wrong here: entering a container's network namespace,
/// running `nft` for a [`Hold`], running the operator's hook.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open {path}: {source}")]
    OpenNetns { path: String, source: std::io::Error },
    #[error("cannot enter {path}: {source}")]
    EnterNetns { path: String, source: nix::Error },
    #[error("listing interfaces: {0}")]
    ListInterfaces(nix::Error),
    #[error("taking {name} down: {source}")]
    LinkDown { name: String, source: std::io::Error },
    /// No thread could be started to work in the namespace.
    #[error("{0}")]
    Thread(std::io::Error),
    #[error("the thread died")]
    ThreadDied,
    #[error("cannot run nft ({0}); install nftables")]
    NftMissing(std::io::Error),
    #[error("nft: {0}")]
    NftIo(std::io::Error),
    #[error("nft did not answer within 10 s")]
    NftTimeout,
    /// `nft` refused (its own words).
    #[error("nft {args}: {stderr}")]
    Nft { args: String, stderr: String },
    #[error("the network hook {} could not be started: {source}", hook.display())]
    HookSpawn { hook: PathBuf, source: std::io::Error },
    #[error("the network hook {} ({}) did not finish within {secs} s and was killed", hook.display(), event.as_str())]
    HookTimeout { hook: PathBuf, event: HookEvent, secs: u64 },
    #[error("the network hook {}: {source}", hook.display())]
    HookWait { hook: PathBuf, source: std::io::Error },
    /// The hook exited unsuccessfully; `said` is the last lines of its
    /// stderr (its own words), joined with ` | `, or empty.
    #[error("the network hook {} ({}) failed ({status}){}", hook.display(), event.as_str(), if said.is_empty() { String::new() } else { format!(": {said}") })]
    HookFailed { hook: PathBuf, event: HookEvent, status: std::process::ExitStatus, said: String },
}

/// ICMP messages sent per peer: each undoes one step of its backoff (up to
/// a minute's worth of doubling), the one that finds the timeout already
/// passed makes it retransmit.
const WAKE_MESSAGES: usize = 12;
/// More peers than this are not woken one by one (they retransmit on their
/// own timers, as without tern's help).
const MAX_WOKEN: usize = 4096;

/// A restored connection's peer to wake: it sent `una` as its oldest
/// unacknowledged byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub una: u32,
}

/// The peers to wake among the connections CRIU dumped in `checkpoint`:
/// those whose far end is outside the container. An unreadable image
/// wakes nobody (the peers then retransmit on their own timers).
pub fn peers_in(checkpoint: &Path) -> Result<Vec<Peer>, CriuTcpError> {
    let conns = crate::criu_tcp::read_dir_connections(checkpoint)?;
    // A dual-stack socket talking IPv4 holds v4-mapped IPv6 addresses.
    let plain = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    };
    let own: Vec<IpAddr> = conns.iter().map(|c| plain(c.local).ip()).collect();
    Ok(conns
        .iter()
        .map(|c| Peer { local: plain(c.local), remote: plain(c.remote), una: c.inq_seq })
        .filter(|p| !p.remote.ip().is_loopback() && !own.contains(&p.remote.ip()))
        .collect())
}

/// What [`announce`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The addresses announced, with their interfaces.
    pub addresses: Vec<(String, IpAddr)>,
    pub peers_woken: usize,
    /// What could not be sent, for the log and the report's warnings.
    pub problems: Vec<String>,
}

/// Announces the addresses of the container whose main process is `pid`
/// and wakes `peers`, from inside its network namespace.
pub async fn announce(pid: u32, peers: Vec<Peer>) -> Announced {
    in_netns(pid, peers, true).await
}

/// Wakes `peers` only: after a dump that left the container running here
/// (its address never moved), for the peers whose packets CRIU's network
/// lock dropped meanwhile.
pub async fn wake_only(pid: u32, peers: Vec<Peer>) -> Announced {
    in_netns(pid, peers, false).await
}

async fn in_netns(pid: u32, peers: Vec<Peer>, announce: bool) -> Announced {
    if pid == 0 {
        return Announced { problems: vec!["the container has no process to announce from".into()], ..Default::default() };
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: it enters the container's network namespace,
    // which must never happen to a thread of tokio's pools.
    let spawned = std::thread::Builder::new().name("tern-announce".into()).spawn(move || {
        let ns = match enter_netns(pid) {
            Ok(ns) => ns,
            Err(e) => {
                let _ = tx.send(Announced { problems: vec![e.to_string()], ..Default::default() });
                return;
            }
        };
        let mut done = Announced::default();
        if !announce {
            wake(&peers, &mut done);
            let _ = tx.send(done);
            return;
        }
        let ifaces = interfaces();
        announce_on(&ifaces, &mut done, 2);
        wake(&peers, &mut done);
        let again = done.addresses.clone();
        let _ = tx.send(done);
        // Once more a second later, for a switch or a neighbour that missed
        // the first ones; nobody waits for this.
        std::thread::sleep(Duration::from_secs(1));
        let mut later = Announced::default();
        announce_on(&ifaces.into_iter().filter(|i| again.iter().any(|(n, _)| *n == i.name)).collect::<Vec<_>>(), &mut later, 1);
        drop(ns);
    });
    if let Err(e) = spawned {
        return Announced { problems: vec![format!("cannot start the announcing thread: {e}")], ..Default::default() };
    }
    rx.await.unwrap_or_else(|_| Announced { problems: vec!["the announcing thread died".into()], ..Default::default() })
}

/// Takes every interface of the container's network namespace down, so
/// that nothing leaves it any more: before a copy that must not run is
/// removed. Killing it would otherwise close its sockets, and each would
/// send its peer a reset; the peers' connections belong to the copy that
/// runs on (the source's, after a rollback). Best effort: a failure is
/// only logged.
pub async fn silence(pid: u32) {
    if pid == 0 {
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("tern-silence".into()).spawn(move || {
        let r = enter_netns(pid).and_then(|_ns| {
            let names: Vec<String> = nix::ifaddrs::getifaddrs()
                .map_err(NetError::ListInterfaces)?
                .filter(|a| !a.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK))
                .map(|a| a.interface_name)
                .collect();
            let mut names = names;
            names.sort();
            names.dedup();
            names.iter().try_for_each(|n| link_down(n).map_err(|source| NetError::LinkDown { name: n.clone(), source }))
        });
        let _ = tx.send(r);
    });
    let r = match spawned {
        Ok(_) => rx.await.unwrap_or(Err(NetError::ThreadDied)),
        Err(e) => Err(NetError::Thread(e)),
    };
    if let Err(e) = r {
        tracing::warn!(pid, "could not silence the container before removing it (its peers may see resets): {e}");
    }
}

/// `ip link set NAME down`, in this thread's network namespace.
fn link_down(name: &str) -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments, checked below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid; the name is copied in bounded.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Moves this thread into the network namespace of `pid`.
fn enter_netns(pid: u32) -> Result<std::fs::File, NetError> {
    let path = format!("/proc/{pid}/ns/net");
    let f = std::fs::File::open(&path).map_err(|source| NetError::OpenNetns { path: path.clone(), source })?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| NetError::EnterNetns { path, source })?;
    Ok(f)
}

/// An interface of the namespace this thread is in.
#[derive(Debug, Clone)]
struct Iface {
    name: String,
    index: u32,
    mac: [u8; 6],
    addrs: Vec<IpAddr>,
}

/// The namespace's interfaces with a MAC and addresses, loopback aside.
fn interfaces() -> Vec<Iface> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let mut out: Vec<Iface> = Vec::new();
    for a in all {
        if a.flags.contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK) {
            continue;
        }
        let Some(addr) = a.address else { continue };
        let entry = match out.iter_mut().position(|i| i.name == a.interface_name) {
            Some(i) => &mut out[i],
            None => {
                let index = nix::net::if_::if_nametoindex(a.interface_name.as_str()).unwrap_or(0);
                out.push(Iface { name: a.interface_name.clone(), index, mac: [0; 6], addrs: Vec::new() });
                out.last_mut().unwrap()
            }
        };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                entry.mac = mac;
            }
        } else if let Some(v4) = addr.as_sockaddr_in() {
            entry.addrs.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            entry.addrs.push(IpAddr::V6(v6.ip()));
        }
    }
    // Link-local IPv6 addresses are nobody's to move (and are still
    // tentative right after a restore).
    for i in &mut out {
        i.addrs.retain(|a| !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80));
    }
    out.retain(|i| i.index != 0 && i.mac != [0; 6] && !i.addrs.is_empty());
    out
}

fn announce_on(ifaces: &[Iface], done: &mut Announced, times: usize) {
    for iface in ifaces {
        for ip in &iface.addrs {
            let sent = (0..times).try_for_each(|_| match ip {
                IpAddr::V4(v4) => send_frame(iface.index, &packets::gratuitous_arp(iface.mac, *v4)),
                IpAddr::V6(v6) => send_na(iface.index, &packets::unsolicited_na(iface.mac, *v6)),
            });
            match sent {
                Ok(()) => done.addresses.push((iface.name.clone(), *ip)),
                Err(e) => done.problems.push(format!("announcing {ip} on {}: {e}", iface.name)),
            }
        }
    }
}

fn wake(peers: &[Peer], done: &mut Announced) {
    let mut v4 = None;
    let mut v6 = None;
    for p in peers.iter().take(MAX_WOKEN) {
        let sent = match (p.remote, p.local) {
            (SocketAddr::V4(remote), SocketAddr::V4(local)) => {
                let sock = v4.get_or_insert_with(|| raw_socket(libc::AF_INET, libc::IPPROTO_ICMP));
                let msg = packets::icmp_host_unreachable(remote, local, p.una);
                send_to(sock, &msg, p.remote)
            }
            (SocketAddr::V6(remote), SocketAddr::V6(local)) => {
                let sock = v6.get_or_insert_with(|| raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6));
                let msg = packets::icmpv6_no_route(remote, local, p.una);
                send_to(sock, &msg, p.remote)
            }
            _ => continue,
        };
        match sent {
            Ok(()) => done.peers_woken += 1,
            Err(e) => done.problems.push(format!("waking {}: {e}", p.remote)),
        }
    }
}

fn raw_socket(family: libc::c_int, protocol: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked
    // before it is owned.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one ICMP message to `to` ([`WAKE_MESSAGES`] times).
fn send_to(sock: &std::io::Result<OwnedFd>, msg: &[u8], to: SocketAddr) -> std::io::Result<()> {
    let sock = sock.as_ref().map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    let addr = nix::sys::socket::SockaddrStorage::from(SocketAddr::new(to.ip(), 0));
    for _ in 0..WAKE_MESSAGES {
        nix::sys::socket::sendto(sock.as_raw_fd(), msg, &addr, nix::sys::socket::MsgFlags::empty())?;
    }
    Ok(())
}

/// Sends a whole Ethernet frame (an ARP) out of interface `index`.
fn send_frame(index: u32, frame: &[u8]) -> std::io::Result<()> {
    let proto = packets::ETH_P_ARP.to_be() as libc::c_int;
    let sock = raw_socket(libc::AF_PACKET, proto)?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set below are
    // the ones packet(7) reads for sending.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = packets::ETH_P_ARP.to_be();
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and sll outlive the call; lengths are theirs.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends a neighbour advertisement to all nodes on interface `index`, hop
/// limit 255 as RFC 4861 requires.
fn send_na(index: u32, msg: &[u8]) -> std::io::Result<()> {
    let sock = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
    let hops: libc::c_int = 255;
    // SAFETY: setsockopt with a c_int option value of its size.
    let set = |opt: libc::c_int, v: libc::c_int| unsafe {
        libc::setsockopt(sock.as_raw_fd(), libc::IPPROTO_IPV6, opt, (&v as *const libc::c_int).cast(), 4)
    };
    if set(libc::IPV6_MULTICAST_HOPS, hops) < 0 || set(libc::IPV6_MULTICAST_IF, index as libc::c_int) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let all_nodes = std::net::SocketAddrV6::new("ff02::1".parse().unwrap(), 0, 0, index);
    let addr = nix::sys::socket::SockaddrStorage::from(SocketAddr::V6(all_nodes));
    nix::sys::socket::sendto(sock.as_raw_fd(), msg, &addr, nix::sys::socket::MsgFlags::empty())?;
    Ok(())
}

/// Incoming packets for a container's addresses, dropped at this host's
/// NIC while the container is being restored here.
///
/// Podman sets up the restored container's network namespace before CRIU
/// runs, and the kernel at once sends IPv6 multicast (router solicitation,
/// MLD) from its interface: the segment's switches learn its MAC on this
/// host's port before CRIU has restored (and locked) its sockets. A peer's
/// retransmission arriving then finds no socket and is answered with a
/// reset. A netfilter `netdev` ingress chain on the macvlan's or ipvlan's
/// parent interface drops those packets instead (before they reach the
/// container's namespace); the peer retransmits once the hold is released
/// and the container runs, woken by [`announce`]. Each hold is a table of
/// its own, `tern-hold-<migration>`, removed after the restore; a table left
/// by an agent that died is removed when the next one starts
/// ([`sweep_holds`]).
pub struct Hold {
    table: String,
}

/// The parent interfaces of the container's layer-2 networks here, with
/// the addresses to hold on each.
pub fn hold_targets(c: &tern_proto::facts::ContainerInfo, here: &[tern_proto::network::NetworkDef]) -> Vec<(String, Vec<IpAddr>)> {
    let mut out: Vec<(String, Vec<IpAddr>)> = Vec::new();
    for a in c.networks.iter().filter(|a| tern_proto::network::driver_keeps_address(&a.driver)) {
        let Some(dev) = here.iter().find(|d| d.name == a.network).map(|d| d.interface.clone()) else { continue };
        if dev.is_empty() || !dev.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b)) {
            continue;
        }
        match out.iter_mut().find(|(d, _)| *d == dev) {
            Some((_, ips)) => ips.extend(a.ips.iter().copied()),
            None => out.push((dev, a.ips.clone())),
        }
    }
    out
}

/// The nftables script of a hold.
fn hold_ruleset(table: &str, targets: &[(String, Vec<IpAddr>)]) -> String {
    let mut s = format!("table netdev {table} {{\n");
    for (i, (dev, ips)) in targets.iter().enumerate() {
        s.push_str(&format!("  chain hold{i} {{\n    type filter hook ingress device \"{dev}\" priority -500; policy accept;\n"));
        for ip in ips {
            let family = if ip.is_ipv4() { "ip" } else { "ip6" };
            s.push_str(&format!("    {family} daddr {ip} drop\n"));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

const HOLD_PREFIX: &str = "tern-hold-";

async fn nft(args: &[&str], stdin: Option<String>) -> Result<String, NetError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(NetError::NftMissing)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(NetError::NftIo)?;
    }
    let out =
        tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await.map_err(|_| NetError::NftTimeout)?.map_err(NetError::NftIo)?;
    if !out.status.success() {
        return Err(NetError::Nft { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Hold {
    /// Holds incoming packets for the container's addresses on its layer-2
    /// networks' parent interfaces here; `None` when it has none.
    pub async fn install(
        c: &tern_proto::facts::ContainerInfo,
        here: &[tern_proto::network::NetworkDef],
        migration: u64,
    ) -> Result<Option<Hold>, NetError> {
        let targets = hold_targets(c, here);
        if targets.is_empty() {
            return Ok(None);
        }
        let table = format!("{HOLD_PREFIX}{migration:x}");
        let _ = nft(&["delete", "table", "netdev", &table], None).await;
        nft(&["-f", "-"], Some(hold_ruleset(&table, &targets))).await?;
        tracing::debug!(%table, ?targets, "holding the container's traffic during the restore");
        Ok(Some(Hold { table }))
    }

    /// Lets the packets through again (done already when CRIU ran the
    /// [`Hold::unlock_script`]).
    pub async fn release(self) -> Result<(), NetError> {
        match nft(&["delete", "table", "netdev", &self.table], None).await {
            Ok(_) => Ok(()),
            Err(NetError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes, into `folder`, a CRIU action script that releases this hold
    /// when CRIU unlocks the restored container's network: the moment its
    /// sockets exist, before Podman's restore returns.
    /// A packet held in between would cost its sender a retransmission
    /// timeout (200 ms or more) after the container already runs.
    pub fn unlock_script(&self, folder: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("nft");
        let path = folder.join("tern-criu-action.sh");
        let text = format!(
            "#!/bin/sh\n# tern (agent/src/netid.rs): the container's packets pass again once CRIU has\n\
             # restored its sockets and unlocks its network.\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" = network-unlock ] || exit 0\n\
             {nft} delete table netdev {} 2>/dev/null\nexit 0\n",
            self.table
        );
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        Ok(path)
    }
}

/// Removes holds an agent that died left behind.
pub async fn sweep_holds() {
    let Ok(list) = nft(&["list", "tables", "netdev"], None).await else { return };
    for name in list.lines().filter_map(|l| l.trim().strip_prefix("table netdev ")).filter(|n| n.starts_with(HOLD_PREFIX)) {
        match nft(&["delete", "table", "netdev", name], None).await {
            Ok(_) => tracing::warn!(table = name, "removed a traffic hold left by an earlier agent"),
            Err(e) => tracing::error!(table = name, "cannot remove a traffic hold left by an earlier agent: {e}"),
        }
    }
}

/// When the hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// The container runs here now (a migration's target, or its source
    /// again after a rollback).
    Arrived,
    /// The container stopped here for good: a migration dumped it and
    /// moves it elsewhere (run after the switchover).
    Departed,
}

impl HookEvent {
    pub fn as_str(&self) -> &'static str {
        match self {
            HookEvent::Arrived => "arrived",
            HookEvent::Departed => "departed",
        }
    }
}

/// What the hook is told, as environment variables.
pub struct HookContext<'a> {
    pub event: HookEvent,
    pub container: &'a tern_proto::facts::ContainerInfo,
    /// This host's name.
    pub host: &'a str,
    /// The other host of the migration.
    pub peer: &'a str,
    pub migration: u64,
}

/// Runs the configured hook, if any, within its time limit.
pub async fn run_hook(cfg: &crate::config::NetworkConfig, ctx: &HookContext<'_>) -> Result<(), NetError> {
    let Some(hook) = &cfg.hook else { return Ok(()) };
    let limit = tern_transport::timeouts::scaled(cfg.hook_timeout());
    let c = ctx.container;
    let join = |v: Vec<String>| v.join(" ");
    let mut cmd = tokio::process::Command::new(hook);
    cmd.env("TERN_EVENT", ctx.event.as_str())
        .env("TERN_CONTAINER", &c.name)
        .env("TERN_CONTAINER_ID", &c.id)
        .env("TERN_ADDRESSES", join(c.ips.iter().map(|i| i.to_string()).collect()))
        .env("TERN_MACS", join(c.networks.iter().map(|n| n.mac.clone()).filter(|m| !m.is_empty()).collect()))
        .env("TERN_NETWORKS", join(c.networks.iter().map(|n| n.network.clone()).collect()))
        .env("TERN_HOST", ctx.host)
        .env("TERN_PEER", ctx.peer)
        .env("TERN_MIGRATION", ctx.migration.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| NetError::HookSpawn { hook: hook.clone(), source })?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => Err(NetError::HookTimeout { hook: hook.clone(), event: ctx.event, secs: limit.as_secs() }),
        Ok(Err(source)) => Err(NetError::HookWait { hook: hook.clone(), source }),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = stderr.trim().lines().rev().take(3).collect();
            let said = last.into_iter().rev().collect::<Vec<_>>().join(" | ");
            Err(NetError::HookFailed { hook: hook.clone(), event: ctx.event, status: out.status, said })
        }
    }
}

/// The checkpoint folder of a container's own folder.
pub fn checkpoint_dir(container_dir: &Path) -> PathBuf {
    container_dir.join("checkpoint")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::facts::Attachment;
    use tern_proto::network::NetworkDef;

    #[test]
    fn a_failed_hook_is_told_in_its_own_words() {
        use std::os::unix::process::ExitStatusExt;
        let failed = |said: &str| NetError::HookFailed {
            hook: "/etc/tern/hook".into(),
            event: HookEvent::Arrived,
            status: std::process::ExitStatus::from_raw(1 << 8),
            said: said.into(),
        };
        assert_eq!(
            failed("no route for 198.51.100.7 | giving up").to_string(),
            "the network hook /etc/tern/hook (arrived) failed (exit status: 1): no route for 198.51.100.7 | giving up"
        );
        assert_eq!(failed("").to_string(), "the network hook /etc/tern/hook (arrived) failed (exit status: 1)");
    }

    #[test]
    fn holds_the_addresses_of_layer2_networks_on_their_parent_interfaces() {
        let ip: IpAddr = "198.51.100.130".parse().unwrap();
        let mut c = tern_proto::facts::ContainerInfo {
            name: "r".into(),
            id: "0123456789abcdef".into(),
            image: String::new(),
            image_id: String::new(),
            state: "running".into(),
            ips: vec![ip],
            memory_bytes: 0,
            files_bytes: 0,
            volumes: vec![],
            pid: 1,
            networks: vec![
                Attachment { network: "lan".into(), driver: "macvlan".into(), ips: vec![ip], mac: String::new() },
                Attachment { network: "podman".into(), driver: "bridge".into(), ips: vec!["203.0.113.2".parse().unwrap()], mac: String::new() },
            ],
            ports: vec![],
            connections: vec![],
            process_uids: vec![],
            systemd_unit: None,
            pod: None,
            dependencies: vec![],
        };
        let here = vec![
            NetworkDef { name: "lan".into(), driver: "macvlan".into(), subnets: vec![], interface: "eth0".into() },
            NetworkDef { name: "podman".into(), driver: "bridge".into(), subnets: vec![], interface: "podman0".into() },
        ];
        let t = hold_targets(&c, &here);
        assert_eq!(t, vec![("eth0".to_string(), vec![ip])]);
        let rules = hold_ruleset("tern-hold-1f", &t);
        assert!(rules.contains("table netdev tern-hold-1f"), "{rules}");
        assert!(rules.contains("hook ingress device \"eth0\""), "{rules}");
        assert!(rules.contains("ip daddr 198.51.100.130 drop"), "{rules}");
        // A parent name that could smuggle nft syntax is left alone.
        let odd = vec![NetworkDef { name: "lan".into(), driver: "macvlan".into(), subnets: vec![], interface: "eth0\"; flush ruleset".into() }];
        assert!(hold_targets(&c, &odd).is_empty());
        // No layer-2 network: nothing to hold.
        c.networks.remove(0);
        assert!(hold_targets(&c, &here).is_empty());
    }
}
