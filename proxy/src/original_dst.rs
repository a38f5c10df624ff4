//! Where a transparently redirected connection was going: `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6), which the kernel answers from the conntrack entry that
//! iptables' `REDIRECT` made (`weft-proxy init` installs those rules). A connection that was not
//! redirected has no such entry, or one that names the listener itself: both read as `None`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// The destination the peer dialled before iptables redirected the connection to this socket,
/// or `None` when it was not redirected (it came to the listener's own address).
pub fn original_dst<S: AsFd>(socket: &S, local: SocketAddr) -> io::Result<Option<SocketAddr>> {
    let fd = socket.as_fd();
    let dst = match local {
        // An IPv4 peer on a dual-stack socket shows as a v4-mapped local address.
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => {
            rustix::net::sockopt::ipv6_original_dst(fd).map(SocketAddr::V6)
        }
        _ => rustix::net::sockopt::ip_original_dst(fd).map(SocketAddr::V4),
    };
    match dst {
        Ok(dst) if dst == local || same_as_mapped(dst, local) => Ok(None),
        Ok(dst) => Ok(Some(dst)),
        // No conntrack entry for the connection: nothing redirected it.
        Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn same_as_mapped(dst: SocketAddr, local: SocketAddr) -> bool {
    match (dst, local) {
        (SocketAddr::V4(d), SocketAddr::V6(l)) => {
            l.ip().to_ipv4_mapped() == Some(*d.ip()) && l.port() == d.port()
        }
        _ => false,
    }
}
