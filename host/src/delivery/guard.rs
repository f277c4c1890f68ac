//! The guard against server-side request forgery through callbacks: addresses in loopback,
//! private, link-local and other non-public ranges are refused at submit time and again at
//! connect time (so DNS rebinding cannot reach them), unless an operator allows the host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Why an address may not receive callbacks, or None for a public unicast address.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
    };
    Some(match () {
        _ if ip.is_broadcast() => "broadcast",
        _ if a == 0 => "\"this network\" (0.0.0.0/8)",
        _ if a == 127 => "loopback",
        _ if a == 10 || in_net([172, 16, 0, 0], 12) || in_net([192, 168, 0, 0], 16) => "private",
        _ if in_net([100, 64, 0, 0], 10) => "carrier-grade NAT (100.64.0.0/10)",
        _ if a == 169 && b == 254 => "link-local (including cloud metadata 169.254.169.254)",
        _ if a == 192 && b == 0 && c == 0 => "IETF protocol assignments (192.0.0.0/24)",
        _ if in_net([192, 0, 2, 0], 24)
            || in_net([198, 51, 100, 0], 24)
            || in_net([203, 0, 113, 0], 24) =>
        {
            "documentation"
        }
        _ if in_net([192, 88, 99, 0], 24) => "6to4 relay anycast",
        _ if in_net([198, 18, 0, 0], 15) => "benchmarking (198.18.0.0/15)",
        _ if (224..=239).contains(&a) => "multicast",
        _ if a >= 240 => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    Some(match () {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        _ if s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0 && s[4] == 0 && s[5] == 0 => {
            "IPv4-compatible"
        }
        _ if s[0] == 0x64 && s[1] == 0xff9b => "NAT64 (64:ff9b::/96)",
        _ if s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 => {
            "IPv4-translated (::ffff:0:0:0/96)"
        }
        _ if s[0] == 0x3fff && (s[1] & 0xf000) == 0 => "documentation (3fff::/20)",
        _ if s[0] == 0x5f00 => "SRv6 SIDs (5f00::/16)",
        _ if s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0 => "discard-only (100::/64)",
        _ if s[0] == 0x2001 && s[1] == 0 => "Teredo (2001::/32)",
        _ if s[0] == 0x2001 && s[1] == 0x2 && s[2] == 0 => "benchmarking (2001:2::/48)",
        _ if s[0] == 0x2001 && (s[1] & 0xfff0) == 0x10 => "ORCHID (2001:10::/28)",
        _ if s[0] == 0x2001 && s[1] == 0xdb8 => "documentation (2001:db8::/32)",
        _ if s[0] == 0x2002 => "6to4 (2002::/16)",
        _ if (s[0] & 0xfe00) == 0xfc00 => "unique local (fc00::/7)",
        _ if (s[0] & 0xffc0) == 0xfe80 => "link-local (fe80::/10)",
        _ if (s[0] & 0xffc0) == 0xfec0 => "site-local (fec0::/10)",
        _ if (s[0] & 0xff00) == 0xff00 => "multicast",
        _ => return None,
    })
}

/// Whether `ip` is an address of this machine: one a socket can be bound to.
fn is_local(ip: IpAddr) -> bool {
    forbidden(ip).is_some() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Which callback hosts an operator allows even though they resolve to non-public addresses.
#[derive(Debug, Clone)]
pub struct CallbackGuard {
    /// Allowed hosts (lower case, no brackets), each on any port or on one port.
    allow: Arc<Vec<(String, Option<u16>)>>,
    /// This host's own listeners: never a target, whatever the allow-list says.
    own: Arc<Vec<SocketAddr>>,
    /// What the guard protects and the flag that allows a host, for messages.
    policy: (&'static str, &'static str),
}

/// The callbacks' and polls' words for [`CallbackGuard`] messages.
const CALLBACK_POLICY: (&str, &str) = ("callbacks and polls", "--allow-callback-host");

impl Default for CallbackGuard {
    fn default() -> Self {
        Self::new(Vec::new(), Vec::new())
    }
}

/// An allow-list entry: `host` (any port) or `host:port` (that port only); IPv6 in brackets
/// when it has a port (`[::1]:8080`).
fn allow_entry(entry: &str) -> (String, Option<u16>) {
    let e = entry.trim().to_ascii_lowercase();
    if let Some(rest) = e.strip_prefix('[') {
        if let Some((host, port)) = rest.split_once("]:") {
            if let Ok(p) = port.parse() {
                return (host.to_string(), Some(p));
            }
        }
        return (rest.trim_end_matches(']').to_string(), None);
    }
    match e.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host.to_string(), Some(p)),
            Err(_) => (e.clone(), None),
        },
        _ => (e, None),
    }
}

impl CallbackGuard {
    /// A guard that lets through the hosts in `allow` (`host` on any port, `host:port` on that
    /// one; compared without case) whatever they resolve to, but never `own`, this host's
    /// listeners.
    pub fn new(allow: Vec<String>, own: Vec<SocketAddr>) -> Self {
        Self {
            allow: Arc::new(allow.iter().map(|h| allow_entry(h)).collect()),
            own: Arc::new(own),
            policy: CALLBACK_POLICY,
        }
    }

    /// The same guard with other words in its messages: `what` it protects ("outbound
    /// requests") and the `flag` that allows a host.
    pub fn for_policy(mut self, what: &'static str, flag: &'static str) -> Self {
        self.policy = (what, flag);
        self
    }

    /// Whether `host` is allowed, on `port` when given (the resolver knows no port: then any
    /// entry for the host lets its addresses through, and the URL check holds the port).
    fn allowed(&self, host: &str, port: Option<u16>) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.allow.iter().any(|(h, p)| {
            *h == host
                && match (p, port) {
                    (Some(p), Some(port)) => *p == port,
                    _ => true,
                }
        })
    }

    /// Whether `addr` reaches one of this host's listeners: the same port, and the listener's
    /// address, or any local one when the listener binds all addresses.
    fn is_own(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.own.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip().to_canonical() == ip
                    || ip.is_loopback()
                    || ip.is_unspecified()
                    || (l.ip().is_unspecified() && is_local(ip)))
        })
    }

    /// Checks a callback or poll URL: scheme, host, and every address it resolves to (the
    /// messages name the URL; callers say which URL it was).
    pub async fn check(&self, url: &str) -> Result<url::Url, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "https" && parsed.scheme() != "http" {
            return Err(format!(
                "{url:?} must be http or https, not {}",
                parsed.scheme()
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .to_string();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs = self.resolve(&host, port, Duration::from_secs(5)).await?;
        self.vet(&host, port, &addrs)?;
        Ok(parsed)
    }

    /// The addresses of `host` (a name, or a literal address with or without brackets), resolved
    /// within `within`.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        within: Duration,
    ) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> =
            tokio::time::timeout(within, tokio::net::lookup_host((bare, port)))
                .await
                .map_err(|_| format!("host {host} did not resolve within {within:?}"))?
                .map_err(|e| format!("host {host} does not resolve: {e}"))?
                .collect();
        if addrs.is_empty() {
            return Err(format!("host {host} resolves to no address"));
        }
        Ok(addrs)
    }

    /// Whether every address `host:port` resolved to may be reached: never this host's own
    /// listeners; non-public addresses only when the operator allows the host (on that port).
    pub fn vet(&self, host: &str, port: u16, addrs: &[SocketAddr]) -> Result<(), String> {
        let allowed = self.allowed(host, Some(port));
        let (what, flag) = self.policy;
        for addr in addrs {
            if self.is_own(*addr) {
                return Err(format!(
                    "{host}:{port} is this Ferry host's own listener ({addr}), which is never a target"
                ));
            }
            if allowed {
                continue;
            }
            if let Some(why) = forbidden(addr.ip()) {
                return Err(format!(
                    "host {host} is {} ({why}): {what} go to public addresses only unless the \
                     operator allows the host (ferry serve {flag})",
                    addr.ip()
                ));
            }
        }
        Ok(())
    }
}

/// Resolves callback hosts for the HTTP client and drops non-public addresses (unless the host is
/// allowed), so that a name that changed its answer since submit cannot reach an internal address.
impl reqwest::dns::Resolve for CallbackGuard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = guard.allowed(&host, None);
            let public: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| allowed || forbidden(a.ip()).is_none())
                .collect();
            if public.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to non-public addresses").into();
                return Err(err);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl CallbackGuard {
    /// The check for URLs whose host is a literal address (no DNS step), at every delivery:
    /// never this host's listeners, and public addresses only unless allowed (with the port).
    pub fn check_literal(&self, url: &url::Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Err("no host".into());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = bare.parse::<IpAddr>().ok();
        if let Some(ip) = ip {
            if self.is_own(SocketAddr::new(ip, port)) {
                return Err(format!("{host}:{port} is this Ferry host's own listener"));
            }
        } else if (bare == "localhost" || bare.ends_with(".localhost"))
            && self.own.iter().any(|l| l.port() == port)
        {
            return Err(format!("{host}:{port} is this Ferry host's own listener"));
        }
        if self.allowed(host, Some(port)) {
            return Ok(());
        }
        if self.allow.iter().any(|(h, _)| h == bare) {
            return Err(format!(
                "{host} is allowed only on other ports than {port} (--allow-callback-host)"
            ));
        }
        match ip.and_then(forbidden) {
            Some(why) => Err(format!("{host} is a {why} address")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        let bad = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.1.1",
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.1",
            "192.88.99.1",
            "240.0.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::1.2.3.4",
            "2002:c000:0204::1",
            "2001:0:4136:e378::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:2::1",
            "2001:10::1",
            "::ffff:0:808:808",
            "3fff::1",
            "3fff:0fff::1",
            "5f00::1",
        ];
        for ip in bad {
            assert!(
                forbidden(ip.parse().unwrap()).is_some(),
                "{ip} should be refused"
            );
        }
        let good = [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.3.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ];
        for ip in good {
            assert_eq!(
                forbidden(ip.parse().unwrap()),
                None,
                "{ip} should be allowed"
            );
        }
    }

    #[tokio::test]
    async fn own_listeners_are_never_a_target_and_ports_are_honoured() {
        let own: SocketAddr = "127.0.0.1:8081".parse().unwrap();
        let guard = CallbackGuard::new(
            vec![
                "127.0.0.1".into(),
                "localhost".into(),
                "10.0.0.5:9000".into(),
                "[::1]:7000".into(),
            ],
            vec![own, "0.0.0.0:8080".parse().unwrap()],
        );
        for url in [
            "http://127.0.0.1:8081/v1/deadletters",
            "http://localhost:8081/",
            "http://127.0.0.1:8080/fn",
            "http://[::1]:8081/",
        ] {
            let err = guard.check(url).await.unwrap_err();
            assert!(err.contains("own listener"), "{url}: {err}");
            let parsed = url::Url::parse(url).unwrap();
            assert!(guard.check_literal(&parsed).is_err(), "{url}");
        }
        assert!(
            guard.check("http://127.0.0.1:9999/").await.is_ok(),
            "another port of an allowed host"
        );
        assert!(guard.check("http://10.0.0.5:9000/").await.is_ok());
        let err = guard.check("http://10.0.0.5:9001/").await.unwrap_err();
        assert!(err.contains("--allow-callback-host"), "{err}");
        assert!(guard
            .check_literal(&url::Url::parse("http://10.0.0.5:9001/").unwrap())
            .is_err());
        assert!(guard.check("http://[::1]:7000/").await.is_ok());
        assert_eq!(allow_entry("Example.COM"), ("example.com".into(), None));
        assert_eq!(allow_entry("::1"), ("::1".into(), None));
        assert_eq!(allow_entry("[::1]"), ("::1".into(), None));
        assert_eq!(allow_entry("[::1]:80"), ("::1".into(), Some(80)));
        assert_eq!(allow_entry("host:80"), ("host".into(), Some(80)));
    }

    #[tokio::test]
    async fn urls_are_checked_at_submit() {
        let guard = CallbackGuard::default();
        for url in [
            "http://127.0.0.1:9/x",
            "https://[::1]/",
            "http://169.254.169.254/latest",
            "http://localhost/",
        ] {
            let err = guard.check(url).await.unwrap_err();
            assert!(err.contains("--allow-callback-host"), "{url}: {err}");
        }
        assert!(guard
            .check("ftp://example.com/")
            .await
            .unwrap_err()
            .contains("http or https"));
        assert!(guard.check("not a url").await.is_err());
        let allowed = CallbackGuard::new(vec!["127.0.0.1".into()], vec![]);
        assert!(allowed.check("http://127.0.0.1:9/x").await.is_ok());
        assert!(allowed
            .check_literal(&url::Url::parse("http://127.0.0.1:9/").unwrap())
            .is_ok());
        assert!(guard
            .check_literal(&url::Url::parse("http://10.0.0.1/").unwrap())
            .is_err());
    }
}
