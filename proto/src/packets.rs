//! The few packets a host sends on a container's behalf once it runs there:
//! built here, byte for byte, sent by the agent (`agent/src/netid.rs`).
//!
//! * **Gratuitous ARP** (IPv4) and **unsolicited neighbour advertisement**
//!   (IPv6): the segment's switches learn the container's MAC on the new
//!   port, its neighbours refresh their caches. What a VM's hypervisor does
//!   after a live migration (QEMU's `qemu_announce_self`).
//! * **ICMP host unreachable** (ICMPv6 no route) quoting a peer's own
//!   segment to the container: a peer whose packets were dropped during the
//!   freeze sits in TCP retransmission backoff (0.2, 0.6, 1.4, 3.0, 6.2 s...)
//!   and would stay stalled for up to one more backoff step after the
//!   container runs again. Linux implements RFC 6069 (`tcp_ld_RTO_revert`):
//!   such an ICMP message about the peer's oldest unacknowledged byte
//!   (`seq == snd_una`) undoes one backoff step and retransmits at once when
//!   the shortened timeout has already passed. A few of them in a row make
//!   the peer retransmit now. The message is a soft error: the connection
//!   is not torn down (unless the peer set `IP_RECVERR`, which TCP clients
//!   almost never do), and it is ignored when the peer is not backing off.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

/// The Ethernet type of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// A broadcast Ethernet frame holding a gratuitous ARP request: `mac` says
/// it holds `ip` (sender and target address both `ip`).
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, address sizes 6 and 4, request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address zero, target protocol address the same ip.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) for `ip` at
/// `mac`, with the override flag, to send to ff02::1 with hop limit 255.
/// The checksum is left zero: the kernel fills it on raw ICMPv6 sockets.
pub fn unsolicited_na(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136; // neighbour advertisement
    m[4] = 0x20; // override
    m[8..24].copy_from_slice(&ip.octets());
    m[24] = 2; // target link-layer address option, 1 unit of 8 bytes
    m[25] = 1;
    m[26..32].copy_from_slice(&mac);
    m
}

/// An ICMP "host unreachable" message (type 3, code 1) about the segment
/// `peer` sent to `local` with sequence number `seq`, as a router would
/// send it back to `peer`: the IPv4 header of that segment and the first 8
/// bytes of its TCP header (ports and sequence number). The kernel adds the
/// outer IP header.
pub fn icmp_host_unreachable(peer: SocketAddrV4, local: SocketAddrV4, seq: u32) -> [u8; 36] {
    let mut m = [0u8; 36];
    m[0] = 3;
    m[1] = 1;
    let ip = &mut m[8..28];
    ip[0] = 0x45; // version 4, 5 words
    ip[2..4].copy_from_slice(&40u16.to_be_bytes()); // a bare TCP segment
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // ttl
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&peer.ip().octets());
    ip[16..20].copy_from_slice(&local.ip().octets());
    let sum = checksum(&m[8..28]);
    m[18..20].copy_from_slice(&sum.to_be_bytes());
    m[28..30].copy_from_slice(&peer.port().to_be_bytes());
    m[30..32].copy_from_slice(&local.port().to_be_bytes());
    m[32..36].copy_from_slice(&seq.to_be_bytes());
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// The ICMPv6 counterpart: "destination unreachable, no route" (type 1,
/// code 0), which Linux's TCP treats as [`icmp_host_unreachable`]. The
/// checksum is left zero for the kernel.
pub fn icmpv6_no_route(peer: SocketAddrV6, local: SocketAddrV6, seq: u32) -> [u8; 56] {
    let mut m = [0u8; 56];
    m[0] = 1;
    let ip = &mut m[8..48];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&20u16.to_be_bytes()); // payload: a bare TCP header
    ip[6] = 6; // next header TCP
    ip[7] = 64;
    ip[8..24].copy_from_slice(&peer.ip().octets());
    ip[24..40].copy_from_slice(&local.ip().octets());
    m[48..50].copy_from_slice(&peer.port().to_be_bytes());
    m[50..52].copy_from_slice(&local.port().to_be_bytes());
    m[52..56].copy_from_slice(&seq.to_be_bytes());
    m
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        // RFC 1071's example.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        let m = icmp_host_unreachable("198.51.100.10:54246".parse().unwrap(), "198.51.100.130:6379".parse().unwrap(), 0xdead_beef);
        assert_eq!(checksum(&m), 0, "the ICMP checksum covers the whole message");
        assert_eq!(checksum(&m[8..28]), 0, "the quoted IP header carries its own checksum");
        assert_eq!(checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn icmp_quotes_the_peers_segment() {
        let m = icmp_host_unreachable("198.51.100.10:54246".parse().unwrap(), "198.51.100.130:6379".parse().unwrap(), 39887251);
        assert_eq!(&m[..2], &[3, 1]);
        // Quoted header: from the peer, to the container, TCP.
        assert_eq!(&m[20..24], &[198, 51, 100, 10]);
        assert_eq!(&m[24..28], &[198, 51, 100, 130]);
        assert_eq!(m[17], 6);
        assert_eq!(u16::from_be_bytes([m[28], m[29]]), 54246);
        assert_eq!(u16::from_be_bytes([m[30], m[31]]), 6379);
        assert_eq!(u32::from_be_bytes([m[32], m[33], m[34], m[35]]), 39887251);
        let v6 = icmpv6_no_route("[fd00::10]:54246".parse().unwrap(), "[fd00::82]:6379".parse().unwrap(), 7);
        assert_eq!(&v6[..2], &[1, 0]);
        assert_eq!(v6[8] >> 4, 6);
        assert_eq!(&v6[16..32], &"fd00::10".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(u32::from_be_bytes([v6[52], v6[53], v6[54], v6[55]]), 7);
    }

    #[test]
    fn gratuitous_arp_and_na_name_the_address_and_mac() {
        let mac = parse_mac("ea:be:23:08:73:8e").unwrap();
        let f = gratuitous_arp(mac, Ipv4Addr::new(198, 51, 100, 129));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[198, 51, 100, 129]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[198, 51, 100, 129]);
        let na = unsolicited_na(mac, "fd00::82".parse().unwrap());
        assert_eq!(na[0], 136);
        assert_eq!(na[4] & 0x20, 0x20);
        assert_eq!(&na[26..32], &mac);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("00:11:22:33:44:ff"), Some([0, 0x11, 0x22, 0x33, 0x44, 0xff]));
        for bad in ["", "00:11:22:33:44", "00:11:22:33:44:55:66", "0:11:22:33:44:55", "zz:11:22:33:44:55"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
