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

/// Which callback hosts an operator allows even though they resolve to non-public addresses.
#[derive(Debug, Clone, Default)]
pub struct CallbackGuard {
    allow: Arc<Vec<String>>,
}

impl CallbackGuard {
    /// A guard that lets through the hosts in `allow` (compared without case) whatever they
    /// resolve to.
    pub fn new(allow: Vec<String>) -> Self {
        Self {
            allow: Arc::new(allow.into_iter().map(|h| h.to_ascii_lowercase()).collect()),
        }
    }

    fn allowed(&self, host: &str) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.allow.contains(&host)
    }

    /// Checks a callback URL at submit time: scheme, host, and every address it resolves to.
    pub async fn check(&self, url: &str) -> Result<url::Url, String> {
        let parsed = url::Url::parse(url)
            .map_err(|e| format!("X-Callback-Url {url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "https" && parsed.scheme() != "http" {
            return Err(format!(
                "X-Callback-Url must be http or https, not {}",
                parsed.scheme()
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("X-Callback-Url {url:?} has no host"))?
            .to_string();
        if self.allowed(&host) {
            return Ok(parsed);
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((bare, port)),
            )
            .await
            .map_err(|_| format!("X-Callback-Url host {host} did not resolve within 5s"))?
            .map_err(|e| format!("X-Callback-Url host {host} does not resolve: {e}"))?
            .collect(),
        };
        for addr in &addrs {
            if let Some(why) = forbidden(addr.ip()) {
                return Err(format!(
                    "X-Callback-Url host {host} is {} ({why}): callbacks go to public addresses only \
                     unless the operator allows the host (ferry serve --allow-callback-host)",
                    addr.ip()
                ));
            }
        }
        Ok(parsed)
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
            let allowed = guard.allowed(&host);
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
    /// The connect-time check for URLs whose host is a literal address (no DNS step).
    pub fn check_literal(&self, url: &url::Url) -> Result<(), String> {
        let Some(host) = url.host_str() else {
            return Err("no host".into());
        };
        if self.allowed(host) {
            return Ok(());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>().ok().and_then(forbidden) {
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
        let allowed = CallbackGuard::new(vec!["127.0.0.1".into()]);
        assert!(allowed.check("http://127.0.0.1:9/x").await.is_ok());
        assert!(allowed
            .check_literal(&url::Url::parse("http://127.0.0.1:9/").unwrap())
            .is_ok());
        assert!(guard
            .check_literal(&url::Url::parse("http://10.0.0.1/").unwrap())
            .is_err());
    }
}
