//! Per-client limits: who a client is (its address, or what a trusted proxy says it is) and how
//! many connections or subscriptions each client holds.
//!
//! - A client is an IPv4 address or an IPv6 /64: one host normally gets a whole /64 (RFC 6177,
//!   RFC 7421), so counting IPv6 addresses one by one would let it take any number of slots.
//!   IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`, from a dual-stack listener) count as IPv4.
//! - `X-Forwarded-For` is believed only when the TCP peer is a configured trusted proxy, and
//!   then only up to the first hop that is not itself trusted (read right to left, as each
//!   proxy appends the address it saw): everything left of that hop was written by the client
//!   and proves nothing.
//! - Counts live in a map holding only clients with at least one slot, so its size is bounded
//!   by the caps themselves; a slot gives its count back when dropped, whatever ends the
//!   connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client key of `ip`: IPv4 as is (IPv4-mapped IPv6 too), IPv6 masked to its /64.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Whether `ip` is one of `proxies`.
pub(crate) fn is_trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|net| net.contains(&ip))
}

/// The address of the client behind `peer`: `peer` itself unless it is a trusted proxy, else
/// the rightmost `X-Forwarded-For` hop that is not a trusted proxy (the leftmost hop when all
/// are trusted). A hop that is not an address (`unknown`, garbage) ends the walk at the last
/// trusted hop: who sent it cannot be told.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !is_trusted(proxies, peer) {
        return peer;
    }
    let mut client = peer;
    // Several headers are one list, in order (RFC 9110 §5.3).
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or("").rsplit(','));
    for hop in hops {
        let Some(ip) = parse_hop(hop.trim()) else {
            return client;
        };
        client = ip;
        if !is_trusted(proxies, ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `ip`, `ipv4:port` or `[ipv6]:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

/// Counts of slots held per client, with a cap.
#[derive(Debug)]
pub(crate) struct PerClient {
    limit: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One slot of one client; gives it back when dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    owner: Arc<PerClient>,
    key: IpAddr,
}

impl PerClient {
    /// At most `limit` slots per client.
    pub(crate) fn new(limit: usize) -> Arc<PerClient> {
        Arc::new(PerClient {
            limit,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for the client at `ip`, or `None` when it holds `limit` already.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let key = client_key(ip);
        let mut held = self.lock();
        let n = held.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: Arc::clone(self),
            key,
        })
    }

    /// Slots `ip`'s client holds now.
    #[cfg(test)]
    pub(crate) fn held(&self, ip: IpAddr) -> usize {
        self.lock().get(&client_key(ip)).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // A poisoned lock only means a panic between two plain integer updates.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut held = self.owner.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:ffff::1")),
            client_key(ip("2001:db8:1:2::9"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:3::1")),
            client_key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies = nets(&["10.0.0.0/8", "192.0.2.1/32"]);
        let h = xff(&["203.0.113.9"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("198.51.100.4"), &h, &proxies),
            ip("198.51.100.4")
        );
        // A trusted peer's is used.
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &proxies), ip("203.0.113.9"));
        assert_eq!(
            client_ip(ip("::ffff:10.1.2.3"), &h, &proxies),
            ip("203.0.113.9")
        );
        // No header: the proxy itself.
        assert_eq!(
            client_ip(ip("10.1.2.3"), &HeaderMap::new(), &proxies),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_up_to_the_first_untrusted_hop() {
        let proxies = nets(&["10.0.0.0/8", "192.0.2.1/32"]);
        // The client wrote "1.1.1.1" itself; 203.0.113.9 is who our proxies saw.
        let h = xff(&["1.1.1.1, 203.0.113.9, 192.0.2.1"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("203.0.113.9"));
        // Split over several headers, with ports.
        let h = xff(&["1.1.1.1", "203.0.113.9:4711", "[2001:db8::1]:443, 10.0.0.7"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("2001:db8::1"));
        // Every hop trusted: the leftmost.
        let h = xff(&["10.9.9.9, 192.0.2.1"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("10.9.9.9"));
        // Garbage stops the walk at the last trusted hop.
        let h = xff(&["203.0.113.9, unknown, 10.0.0.5"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &h, &proxies), ip("10.0.0.5"));
    }

    #[test]
    fn slots_are_capped_per_client_and_given_back_on_drop() {
        let per = PerClient::new(2);
        let a = per.try_acquire(ip("192.0.2.1")).unwrap();
        let b = per.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(per.try_acquire(ip("192.0.2.1")).is_none());
        let other = per.try_acquire(ip("192.0.2.2")).unwrap();
        drop(a);
        assert_eq!(per.held(ip("192.0.2.1")), 1);
        let c = per.try_acquire(ip("192.0.2.1")).unwrap();
        drop((b, c, other));
        assert_eq!(per.held(ip("192.0.2.1")), 0);
        assert!(per.lock().is_empty(), "clients without slots are forgotten");
    }
}
