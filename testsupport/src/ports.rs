//! Loopback ports for the servers the integration tests start.
//!
//! Asking the kernel for port 0 and closing the socket is racy: the next
//! request may get the same port back (Dovecot then fails with "duplicate
//! listener"), and any outgoing connection may take it as its source port
//! before the server binds it. A [`PortPool`] hands out each port of its
//! range at most once per process, from below the kernel's ephemeral range
//! (32768 and up on Linux), and checks that TCP and UDP are free on
//! 127.0.0.1 right now.
//!
//! One pool per test process: every harness of this crate (BIND, pebble,
//! the mail servers, the fake ACME server) takes its ports from
//! [`free_port`].

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::ops::Range;
use std::sync::Mutex;

/// A range of ports handed out in turn, starting at an offset derived from
/// the process id so that two test processes running at once start apart.
pub struct PortPool {
    range: Range<u16>,
    /// How many ports of the range have been tried so far.
    tried: Mutex<u32>,
}

impl PortPool {
    pub const fn new(range: Range<u16>) -> PortPool {
        PortPool {
            range,
            tried: Mutex::new(0),
        }
    }

    /// A port of the pool not handed out before by this pool, free for TCP
    /// and UDP on 127.0.0.1 at the time of the call.
    pub fn take(&self) -> u16 {
        let len = u32::from(self.range.end - self.range.start);
        let offset = std::process::id().wrapping_mul(7919) % len;
        let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
        while *tried < len {
            let port = self.range.start + ((offset + *tried) % len) as u16;
            *tried += 1;
            let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, port));
            if tcp.is_ok() && udp.is_ok() {
                return port;
            }
        }
        panic!("port pool {:?} is used up", self.range)
    }
}

/// The test process's ports.
static PORTS: PortPool = PortPool::new(20000..32000);

/// A loopback port (TCP and UDP) free a moment ago and never handed out
/// before in this test process.
pub fn free_port() -> u16 {
    PORTS.take()
}
