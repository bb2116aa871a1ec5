//! Which webhook targets may be called: only public internet addresses, unless the operator
//! allows private ones (`--dev`, `--webhook-allow-private`).
//!
//! Without this, anyone who may subscribe could make the server POST into its own network
//! (cloud metadata at 169.254.169.254, admin ports on loopback, the office LAN): server-side
//! request forgery. The check runs when a subscription is created and again at every delivery,
//! inside the HTTP client's resolver, so the addresses checked are the addresses connected to
//! and a DNS answer that changes between the two cannot slip through.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;

use url::{Host, Url};

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("url must be an absolute http or https URL")]
    NotHttp,
    #[error("{host} is not a public address ({ip})")]
    NotPublic { host: String, ip: IpAddr },
}

/// Whether `ip` is a public unicast address, the only kind a webhook may reach by default.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = a == 0 // "this network", unspecified
        || a == 10 // RFC 1918
        || (a == 100 && (64..128).contains(&b)) // CGNAT, RFC 6598
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // RFC 1918
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // IETF assignments, TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168) // RFC 1918
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !special
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address: judge that one.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // 6to4 (2002::/16) embeds an IPv4 address in the next 32 bits.
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // Global unicast is 2000::/3; everything else (::1, ::, fc00::/7, fe80::/10, ff00::/8,
    // IPv4-compatible ::a.b.c.d, discard 100::/64) is not public.
    let global = (s[0] & 0xe000) == 0x2000;
    // 2001::/23 (IETF assignments, Teredo), 2001:db8::/32 and 3fff::/20 (documentation).
    let special =
        (s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8)) || (s[0] == 0x3fff && s[1] < 0x1000);
    global && !special
}

/// Checks the URL's host when it is an IP literal; names are checked when resolved.
pub fn check_literal(url: &Url) -> Result<(), PolicyError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PolicyError::NotHttp);
    }
    let ip = match url.host() {
        None => return Err(PolicyError::NotHttp),
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    if is_public(ip) {
        Ok(())
    } else {
        Err(PolicyError::NotPublic {
            host: ip.to_string(),
            ip,
        })
    }
}

/// The first non-public address among `addrs`, which makes the whole name refused: a name
/// that resolves to both kinds is treated as the worse one.
pub fn first_non_public(addrs: &[SocketAddr]) -> Option<IpAddr> {
    addrs.iter().map(SocketAddr::ip).find(|ip| !is_public(*ip))
}

/// Resolves a name on the blocking pool (the system resolver blocks), so no actor or HTTP
/// worker thread waits on DNS.
pub async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let host = host.to_string();
    actix_web::rt::task::spawn_blocking(move || {
        (host.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The full check at subscription time. A name that does not resolve now is let through: it
/// cannot reach anything yet, and delivery checks it again.
pub async fn check_url(url: &Url) -> Result<(), PolicyError> {
    check_literal(url)?;
    let Some(Host::Domain(name)) = url.host() else {
        return Ok(());
    };
    let port = url.port_or_known_default().unwrap_or(80);
    match resolve(name, port).await {
        Ok(addrs) => match first_non_public(&addrs) {
            Some(ip) => Err(PolicyError::NotPublic {
                host: name.to_string(),
                ip,
            }),
            None => Ok(()),
        },
        Err(e) => {
            log::info!("webhook host {name} does not resolve now ({e}); checked again at delivery");
            Ok(())
        }
    }
}

/// The HTTP client's resolver outside `--dev`: resolves, and refuses names that lead to a
/// non-public address, so delivery connects only to addresses that passed the policy.
pub struct PublicOnlyResolver;

impl actix_tls::connect::Resolve for PublicOnlyResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, Box<dyn std::error::Error>>> + 'a>>
    {
        Box::pin(async move {
            let addrs = resolve(host, port).await?;
            match first_non_public(&addrs) {
                Some(ip) => Err(Box::new(PolicyError::NotPublic {
                    host: host.to_string(),
                    ip,
                }) as Box<dyn std::error::Error>),
                None => Ok(addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn refuses_non_public_v4() {
        for ip in [
            "127.0.0.1",
            "127.255.0.1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
        ] {
            assert!(!public(ip), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
        ] {
            assert!(public(ip), "{ip}");
        }
    }

    #[test]
    fn refuses_non_public_v6() {
        for ip in [
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(!public(ip), "{ip}");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(public(ip), "{ip}");
        }
    }

    #[test]
    fn checks_literals_and_schemes() {
        let check = |s: &str| check_literal(&Url::parse(s).unwrap());
        assert!(check("http://127.0.0.1/hook").is_err());
        assert!(check("http://10.0.0.1").is_err());
        assert!(check("http://[::1]:8080/").is_err());
        assert!(check("http://[::ffff:127.0.0.1]/").is_err());
        assert!(
            check("http://0x7f000001/").is_err(),
            "hex forms parse as IPv4"
        );
        assert_eq!(check("ftp://8.8.8.8/"), Err(PolicyError::NotHttp));
        assert!(check("https://8.8.8.8/hook").is_ok());
        assert!(
            check("https://hooks.example.com/x").is_ok(),
            "names wait for DNS"
        );
    }

    #[actix_rt::test]
    async fn names_are_judged_by_what_they_resolve_to() {
        let url = Url::parse("http://localhost:9/hook").unwrap();
        assert!(matches!(
            check_url(&url).await,
            Err(PolicyError::NotPublic { .. })
        ));
        let resolved = [
            SocketAddr::from(([8, 8, 8, 8], 80)),
            SocketAddr::from(([127, 0, 0, 1], 80)),
        ];
        assert_eq!(
            first_non_public(&resolved),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
    }
}
