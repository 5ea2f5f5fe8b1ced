//! Loopback ports a test can start a server on again after stopping it.
//!
//! Why: a port the kernel hands out for `:0` comes from its ephemeral
//! range, the range every outgoing connection's source port comes from
//! too. Between a server's stop and its restart on the same port, a
//! client's new connection may take that port as its source, and the
//! restart's bind fails (CI once saw a restarted shard exit at start:
//! "featmux never logged `listening`"). Ports below the range are never
//! handed out so.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are probed.
const SPAN: u32 = 12_000;

/// The first port of the kernel's ephemeral range (Linux's
/// `ip_local_port_range`; 32768 where it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A free loopback port below the ephemeral range, for a server that is
/// stopped and started again at the same address. Each call probes the
/// next port, from a place spread by process id, so test threads and
/// test binaries running side by side take different ones.
pub fn restartable_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_start().max(SPAN + 1024);
    let first = end - SPAN;
    let spread = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let offset = (spread + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(first + offset).expect("ports below the ephemeral range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {first}..{end}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..20).map(|_| restartable_port()).collect();
        for &port in &ports {
            assert!(u32::from(port) < ephemeral_start(), "{port}");
            assert!(TcpListener::bind(("127.0.0.1", port)).is_ok(), "{port}");
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }
}
