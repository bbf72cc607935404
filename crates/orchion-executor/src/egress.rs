//! Where a task's HTTP requests may go: public addresses, and the networks and hosts the
//! server's configuration allows for the task's project (`egress.allow`). Loopback,
//! link-local (cloud metadata), private and other special addresses are refused otherwise.
//!
//! The check is on the address a name resolves to, so a public name pointing at 127.0.0.1 is
//! refused too, and it is made again for every redirect.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;

/// What a task may reach besides public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    networks: Vec<IpNet>,
    hosts: Vec<String>,
}

impl Egress {
    /// From the server's allow list for the task's project: each entry a network (`10.0.0.0/8`),
    /// an address (`127.0.0.1`) or a host name (`worker.internal`, any address it resolves
    /// to). Entries that are none of these are left out (the server checks them at start).
    pub fn allowing<S: AsRef<str>>(entries: &[S]) -> Self {
        let mut egress = Egress::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if let Ok(net) = entry.parse::<IpNet>() {
                egress.networks.push(net);
            } else if let Ok(ip) = entry.parse::<IpAddr>() {
                egress.networks.push(IpNet::from(ip));
            } else if !entry.is_empty() {
                egress.hosts.push(entry.to_ascii_lowercase());
            }
        }
        egress
    }

    /// Whether `host` is allowed by name, whatever it resolves to.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// `None` when `ip` may be reached, else why not.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        if self.networks.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        special(ip).map(|kind| {
            format!(
                "{ip} is {kind}; tasks reach only public addresses unless egress.allow (or egress.projects.<project>.allow) names it"
            )
        })
    }

    /// Why the URL's host may not be reached, when it is an address that is refused; names
    /// are checked when they resolve.
    pub fn refuse_url(&self, url: &reqwest::Url) -> Option<String> {
        match url.host()? {
            url::Host::Ipv4(ip) => self.refusal(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => self.refusal(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        }
    }

    /// A resolver for reqwest that drops refused addresses, and fails when none is left.
    pub(crate) fn resolver(&self) -> Arc<Resolver> {
        Arc::new(Resolver(self.clone()))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:127.0.0.1`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What kind of non-public address `ip` is, if it is one.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (where cloud metadata services answer)")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        Some("an IETF protocol address")
    } else if a == 198 && (18..20).contains(&b) {
        Some("a benchmarking address")
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address (where cloud metadata services answer)")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a private (unique local) address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.to_ipv4().is_some() && ip.segments()[..6] == [0; 6] {
        // The deprecated IPv4-compatible form (`::a.b.c.d`).
        Some("an IPv4-compatible address")
    } else if first == 0x64 && ip.segments()[1] == 0xff9b {
        // NAT64 (`64:ff9b::/96`) reaches the IPv4 address it embeds.
        let [.., c, d] = ip.segments();
        let v4 = Ipv4Addr::new((c >> 8) as u8, c as u8, (d >> 8) as u8, d as u8);
        special_v4(v4)
    } else {
        None
    }
}

pub(crate) struct Resolver(Egress);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if egress.host_allowed(&host) {
                return Ok(Box::new(resolved.into_iter()) as reqwest::dns::Addrs);
            }
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|addr| egress.refusal(addr.ip()).is_none());
            if allowed.is_empty() {
                let why = refused
                    .first()
                    .and_then(|addr| egress.refusal(addr.ip()))
                    .unwrap_or_else(|| "it resolves to no address".to_owned());
                return Err(format!("egress refused for `{host}`: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_reached_unless_allowed() {
        let none = Egress::default();
        for refused in [
            "127.0.0.1",
            "127.8.9.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "224.0.0.1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(none.refusal(ip).is_some(), "{refused} was allowed");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert_eq!(none.refusal(public.parse().unwrap()), None, "{public}");
        }
        let some = Egress::allowing(&["10.0.0.0/8", "127.0.0.1", "worker.internal"]);
        assert_eq!(some.refusal("10.9.9.9".parse().unwrap()), None);
        assert_eq!(some.refusal("127.0.0.1".parse().unwrap()), None);
        assert!(some.refusal("127.0.0.2".parse().unwrap()).is_some());
        assert!(some.host_allowed("Worker.Internal."));
        assert!(!some.host_allowed("evil.internal"));
    }
}
