//! Whether a redirected connection came from this proxy itself. A proxy run under another UID
//! than the one `weft-proxy init --proxy-uid` skips has its own connections redirected back into
//! it, and each would open another, without end. The first redirected connections are checked
//! against the kernel's socket table (`/proc/net/tcp`, `tcp6`: the owner of the socket at the
//! other end); once one is the proxy's own, every redirected connection is refused, and the
//! misconfiguration said once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// How many redirected connections are checked: a misconfigured proxy's first connection of
/// its own is among the first it sees, and after these the check costs nothing.
const CHECKS: u32 = 16;

#[derive(Debug, Default)]
pub struct OwnTraffic {
    checked: AtomicU32,
    looping: AtomicBool,
}

impl OwnTraffic {
    /// Whether the redirected connection from `peer`, which was going to `dst`, is (or follows
    /// one that was) this proxy's own.
    pub fn looping(&self, peer: SocketAddr, dst: SocketAddr) -> bool {
        if self.looping.load(Ordering::Relaxed) {
            return true;
        }
        if self.checked.fetch_add(1, Ordering::Relaxed) >= CHECKS {
            return false;
        }
        let me = rustix::process::getuid().as_raw();
        if socket_owner(peer, dst) != Some(me) {
            return false;
        }
        if !self.looping.swap(true, Ordering::Relaxed) {
            tracing::error!(
                uid = me,
                "this proxy's own connections are redirected back into it: it must run as the UID \
                 (or GID) that `weft-proxy init --proxy-uid` was given; refusing redirected connections"
            );
        }
        true
    }
}

/// The UID owning the TCP socket whose local address is `local` and remote address `remote`.
fn socket_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let table = match local {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    owner_in(&text, local, remote)
}

/// [`socket_owner`] over the text of a socket table.
fn owner_in(text: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (local, remote) = (encode(local), encode(remote));
    text.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let (l, r) = (fields.nth(1)?, fields.next()?);
        if l != local || r != remote {
            return None;
        }
        // st, tx_queue:rx_queue, tr:tm->when, retrnsmt, then uid.
        fields.nth(4)?.parse().ok()
    })
}

/// An address as the kernel's socket tables spell it: each 32-bit word of the address in host
/// (little-endian) order, in hex, then the port.
fn encode(addr: SocketAddr) -> String {
    let ip = match addr {
        SocketAddr::V4(a) => format!("{:08X}", u32::from_le_bytes(a.ip().octets())),
        SocketAddr::V6(a) => a
            .ip()
            .octets()
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    format!("{ip}:{:04X}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_a_socket_in_the_kernels_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1060 1\n   1: 0100007F:A0B1 0200000A:1F90 01 00000000:00000000 00:00000000 00000000  2102        0 4242 1\n";
        let local = "127.0.0.1:41137".parse().unwrap();
        assert_eq!(
            owner_in(v4, local, "10.0.0.2:8080".parse().unwrap()),
            Some(2102)
        );
        assert_eq!(owner_in(v4, local, "10.0.0.2:8081".parse().unwrap()), None);
        assert_eq!(
            encode("[fd77::12]:8080".parse().unwrap()),
            "000077FD000000000000000012000000:1F90"
        );
    }

    #[test]
    fn a_connection_of_this_process_is_its_own() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let me = rustix::process::getuid().as_raw();
        assert_eq!(socket_owner(local, remote), Some(me));
        let own = OwnTraffic::default();
        assert!(own.looping(local, remote));
        assert!(
            own.looping("127.0.0.1:1".parse().unwrap(), remote),
            "refused from then on"
        );
    }
}
