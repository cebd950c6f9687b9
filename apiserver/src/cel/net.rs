//! Kubernetes' IP, CIDR and URL libraries (k8s.io/apiserver/pkg/cel/library `ip.go`,
//! `cidr.go`, `urls.go`): `ip()`, `isIP()`, `ip.isCanonical()`, `family()`, the address
//! class tests, `cidr()`, `isCIDR()`, `containsIP`/`containsCIDR`, `prefixLength`,
//! `masked`; `url()`, `isURL()` and the URL accessors. Addresses follow Go's `netip`
//! (no leading zeros, no zones, IPv4-mapped IPv6 refused as upstream does); URLs follow
//! Go's `net/url` (`isURL` is `ParseRequestURI`: absolute URLs or absolute paths).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cel::common::types::{Type, STRING_TYPE};
use cel::{DeclarationError, Env, ExecutionError};

use super::library::{out, values, Args, Out};
use super::CelValue;

const IP: &str = "net.IP";
const CIDR: &str = "net.CIDR";
const URL: &str = "kubernetes.URL";

pub(super) fn register(env: &mut Env) -> Result<(), DeclarationError> {
    let ip = || Type::new_opaque_type(IP);
    let cidr = || Type::new_opaque_type(CIDR);
    let url = || Type::new_opaque_type(URL);
    env.add_overload("ip", "string_to_ip", vec![STRING_TYPE], to_ip)?;
    env.add_overload("isIP", "is_ip", vec![STRING_TYPE], is_ip)?;
    env.add_overload(
        "ip.isCanonical",
        "ip_is_canonical",
        vec![STRING_TYPE],
        is_canonical,
    )?;
    env.add_overload("string", "ip_to_string", vec![ip()], to_string)?;
    type F = cel::common::functions::Function;
    for (name, f) in [
        ("family", family as F),
        ("isUnspecified", is_unspecified),
        ("isLoopback", is_loopback),
        ("isLinkLocalMulticast", is_link_local_multicast),
        ("isLinkLocalUnicast", is_link_local_unicast),
        ("isGlobalUnicast", is_global_unicast),
    ] {
        env.add_member_overload(name, &format!("ip_{name}"), ip(), vec![], f)?;
    }

    env.add_overload("cidr", "string_to_cidr", vec![STRING_TYPE], to_cidr)?;
    env.add_overload("isCIDR", "is_cidr", vec![STRING_TYPE], is_cidr)?;
    env.add_overload("string", "cidr_to_string", vec![cidr()], to_string)?;
    env.add_member_overload("ip", "cidr_ip", cidr(), vec![], cidr_ip)?;
    env.add_member_overload("masked", "cidr_masked", cidr(), vec![], cidr_masked)?;
    env.add_member_overload(
        "prefixLength",
        "cidr_prefix_length",
        cidr(),
        vec![],
        cidr_prefix_length,
    )?;
    for (id, arg) in [("ip", ip()), ("string", STRING_TYPE)] {
        env.add_member_overload(
            "containsIP",
            &format!("cidr_contains_ip_{id}"),
            cidr(),
            vec![arg],
            contains_ip,
        )?;
    }
    for (id, arg) in [("cidr", cidr()), ("string", STRING_TYPE)] {
        env.add_member_overload(
            "containsCIDR",
            &format!("cidr_contains_cidr_{id}"),
            cidr(),
            vec![arg],
            contains_cidr,
        )?;
    }

    env.add_overload("url", "string_to_url", vec![STRING_TYPE], to_url)?;
    env.add_overload("isURL", "is_url_string", vec![STRING_TYPE], is_url)?;
    for (name, f) in [
        ("getScheme", url_scheme as F),
        ("getHost", url_host),
        ("getHostname", url_hostname),
        ("getPort", url_port),
        ("getEscapedPath", url_escaped_path),
        ("getQuery", url_query),
    ] {
        env.add_member_overload(name, &format!("url_{name}"), url(), vec![], f)?;
    }
    Ok(())
}

fn no_overload(function: &str) -> ExecutionError {
    ExecutionError::no_such_overload(function, vec![])
}

fn string_arg(args: &Args<'_, '_>, function: &str) -> Result<String, ExecutionError> {
    match values(args)?.into_iter().next() {
        Some(CelValue::String(s)) => Ok(s.to_string()),
        _ => Err(no_overload(function)),
    }
}

// === ip ===

#[derive(Debug, PartialEq, Eq)]
struct Ip(IpAddr);

impl cel::objects::Opaque for Ip {
    fn runtime_type_name(&self) -> &str {
        IP
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl cel::objects::Opaque for Cidr {
    fn runtime_type_name(&self) -> &str {
        CIDR
    }
}

/// Go's `netip.ParseAddr` without zones (refused by Kubernetes with their own message).
fn parse_addr(s: &str) -> Result<IpAddr, String> {
    if let Some((a, _zone)) = s.split_once('%') {
        if a.contains(':') && a.parse::<Ipv6Addr>().is_ok() {
            return Err(format!("IP address {s:?} with zone value is not allowed"));
        }
    }
    // Rust's parser is netip's: dotted quads without leading zeros, RFC 4291 text for IPv6
    s.parse::<IpAddr>().map_err(|_| {
        format!(
            "IP Address {s:?} parse error during conversion from string: ParseAddr({s:?}): unable to parse IP"
        )
    })
}

/// Kubernetes' `parseIPAddr`: `netip` plus no IPv4-mapped IPv6 addresses.
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let a = parse_addr(s)?;
    if let IpAddr::V6(v6) = a {
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!("IPv4-mapped IPv6 address {s:?} is not allowed"));
        }
    }
    Ok(a)
}

fn to_ip<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = string_arg(&args, "ip")?;
    let a = parse_ip(&s).map_err(|e| ExecutionError::function_error("ip", e))?;
    out(CelValue::Opaque(Arc::new(Ip(a))))
}

fn is_ip<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = string_arg(&args, "isIP")?;
    out(CelValue::Bool(parse_ip(&s).is_ok()))
}

fn is_canonical<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = string_arg(&args, "ip.isCanonical")?;
    let a = parse_ip(&s).map_err(|e| ExecutionError::function_error("ip.isCanonical", e))?;
    // Rust prints addresses as netip does (RFC 5952: lowercase, the longest run of zero
    // groups compressed)
    out(CelValue::Bool(a.to_string() == s))
}

fn the_ip(args: &Args<'_, '_>, function: &str) -> Result<IpAddr, ExecutionError> {
    match values(args)?.first() {
        Some(CelValue::Opaque(o)) => o
            .downcast_ref::<Ip>()
            .map(|i| i.0)
            .ok_or_else(|| no_overload(function)),
        Some(CelValue::String(s)) => {
            parse_ip(s).map_err(|e| ExecutionError::function_error(function, e))
        }
        _ => Err(no_overload(function)),
    }
}

fn to_string<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = match values(&args)?.first() {
        Some(CelValue::Opaque(o)) => match (o.downcast_ref::<Ip>(), o.downcast_ref::<Cidr>()) {
            (Some(ip), _) => ip.0.to_string(),
            (_, Some(c)) => format!("{}/{}", c.addr, c.bits),
            _ => return Err(no_overload("string")),
        },
        _ => return Err(no_overload("string")),
    };
    out(CelValue::from(s))
}

fn family<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let f = match the_ip(&args, "family")? {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    };
    out(CelValue::Int(f))
}

fn is_unspecified<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    out(CelValue::Bool(
        the_ip(&args, "isUnspecified")?.is_unspecified(),
    ))
}

fn is_loopback<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    out(CelValue::Bool(the_ip(&args, "isLoopback")?.is_loopback()))
}

/// Go's `IsLinkLocalMulticast`: 224.0.0.0/24, ff02::/16 (any flags nibble: `ff?2`).
fn link_local_multicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    }
}

/// Go's `IsLinkLocalUnicast`: 169.254.0.0/16, fe80::/10.
fn link_local_unicast(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_link_local_multicast<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    out(CelValue::Bool(link_local_multicast(the_ip(
        &args,
        "isLinkLocalMulticast",
    )?)))
}

fn is_link_local_unicast<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    out(CelValue::Bool(link_local_unicast(the_ip(
        &args,
        "isLinkLocalUnicast",
    )?)))
}

/// Go's `IsGlobalUnicast`: not unspecified, loopback, multicast, link-local or the IPv4
/// broadcast address (private ranges are global unicast).
fn is_global_unicast<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let a = the_ip(&args, "isGlobalUnicast")?;
    let global = !(a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || link_local_unicast(a)
        || a == IpAddr::V4(Ipv4Addr::BROADCAST));
    out(CelValue::Bool(global))
}

// === cidr ===

/// Go's `netip.ParsePrefix` plus Kubernetes' refusal of IPv4-mapped addresses.
fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let wrap =
        |e: String| format!("network address parse error during conversion from string: {e}");
    let Some((a, bits)) = s.rsplit_once('/') else {
        return Err(wrap(format!("netip.ParsePrefix({s:?}): no '/'")));
    };
    let addr = parse_addr(a).map_err(|_| {
        wrap(format!(
            "netip.ParsePrefix({s:?}): ParseAddr({a:?}): unable to parse IP"
        ))
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let digits = !bits.is_empty() && bits.bytes().all(|b| b.is_ascii_digit());
    if !digits || (bits.len() > 1 && bits.starts_with('0')) {
        return Err(wrap(format!(
            "netip.ParsePrefix({s:?}): bad bits after slash: {bits:?}"
        )));
    }
    let bits = bits.parse::<u16>().unwrap_or(u16::MAX);
    if bits > max {
        return Err(wrap(format!(
            "netip.ParsePrefix({s:?}): prefix length out of range"
        )));
    }
    if let IpAddr::V6(v6) = addr {
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!("IPv4-mapped IPv6 address {s:?} is not allowed"));
        }
    }
    Ok(Cidr {
        addr,
        bits: bits as u8,
    })
}

fn mask(a: IpAddr, bits: u8) -> IpAddr {
    match a {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

fn contains(c: &Cidr, a: IpAddr) -> bool {
    c.addr.is_ipv4() == a.is_ipv4() && mask(a, c.bits) == mask(c.addr, c.bits)
}

fn to_cidr<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = string_arg(&args, "cidr")?;
    let c = parse_cidr(&s).map_err(|e| ExecutionError::function_error("cidr", e))?;
    out(CelValue::Opaque(Arc::new(c)))
}

fn is_cidr<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = string_arg(&args, "isCIDR")?;
    out(CelValue::Bool(parse_cidr(&s).is_ok()))
}

/// The CIDR (target) and the other arguments as values.
fn the_cidr(args: &Args<'_, '_>, function: &str) -> Result<(Cidr, Vec<CelValue>), ExecutionError> {
    let mut v = values(args)?;
    let rest = v.split_off(1.min(v.len()));
    match v.first() {
        Some(CelValue::Opaque(o)) => o
            .downcast_ref::<Cidr>()
            .map(|c| {
                (
                    Cidr {
                        addr: c.addr,
                        bits: c.bits,
                    },
                    rest,
                )
            })
            .ok_or_else(|| no_overload(function)),
        _ => Err(no_overload(function)),
    }
}

fn cidr_ip<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (c, _) = the_cidr(&args, "ip")?;
    out(CelValue::Opaque(Arc::new(Ip(c.addr))))
}

fn cidr_masked<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (c, _) = the_cidr(&args, "masked")?;
    out(CelValue::Opaque(Arc::new(Cidr {
        addr: mask(c.addr, c.bits),
        bits: c.bits,
    })))
}

fn cidr_prefix_length<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (c, _) = the_cidr(&args, "prefixLength")?;
    out(CelValue::Int(c.bits as i64))
}

fn contains_ip<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (c, rest) = the_cidr(&args, "containsIP")?;
    let a = match rest.first() {
        Some(CelValue::Opaque(o)) => o
            .downcast_ref::<Ip>()
            .map(|i| i.0)
            .ok_or_else(|| no_overload("containsIP"))?,
        Some(CelValue::String(s)) => {
            parse_ip(s).map_err(|e| ExecutionError::function_error("containsIP", e))?
        }
        _ => return Err(no_overload("containsIP")),
    };
    out(CelValue::Bool(contains(&c, a)))
}

fn contains_cidr<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let (c, rest) = the_cidr(&args, "containsCIDR")?;
    let other = match rest.first() {
        Some(CelValue::Opaque(o)) => o
            .downcast_ref::<Cidr>()
            .map(|o| Cidr {
                addr: o.addr,
                bits: o.bits,
            })
            .ok_or_else(|| no_overload("containsCIDR"))?,
        Some(CelValue::String(s)) => {
            parse_cidr(s).map_err(|e| ExecutionError::function_error("containsCIDR", e))?
        }
        _ => return Err(no_overload("containsCIDR")),
    };
    out(CelValue::Bool(
        c.bits <= other.bits && contains(&c, other.addr),
    ))
}

// === url ===

/// A URL as Go's `url.Parse` splits it (the parts the library reads).
#[derive(Debug, Default, PartialEq, Eq)]
struct Url {
    scheme: String,
    host: String,
    path: String,
    raw_path: String,
    raw_query: String,
}

impl cel::objects::Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        URL
    }
}

/// Go's `url.ParseRequestURI` (`via_request`) or, with the fragment already cut,
/// `url.Parse`; errors in Go's words without the `parse "<url>": ` prefix.
fn parse_url(raw: &str, via_request: bool) -> Result<Url, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    let mut u = Url::default();
    if raw.is_empty() && via_request {
        return Err("empty url".into());
    }
    if raw == "*" {
        u.path = "*".into();
        return Ok(u);
    }
    let mut rest = raw;
    // the scheme: a letter, then letters, digits, `+`, `-`, `.`, up to a `:`
    for (i, c) in raw.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i > 0 => {}
            ':' if i == 0 => return Err("missing protocol scheme".into()),
            ':' => {
                u.scheme = raw[..i].to_ascii_lowercase();
                rest = &raw[i + 1..];
                break;
            }
            _ => break,
        }
    }
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some((r, q)) = rest.split_once('?') {
        u.raw_query = q.into();
        rest = r;
    }
    if !rest.starts_with('/') {
        if !u.scheme.is_empty() {
            // rootless (`mailto:x`): Go keeps it as `Opaque`
            return Ok(u);
        }
        if via_request {
            return Err("invalid URI for request".into());
        }
        if rest.split('/').next().is_some_and(|s| s.contains(':')) {
            return Err("first path segment in URL cannot contain colon".into());
        }
    }
    if (!u.scheme.is_empty() || !via_request && !rest.starts_with("///")) && rest.starts_with("//")
    {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => after.split_at(i),
            None => (after, ""),
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        check_host(host)?;
        u.host = host.into();
        rest = path;
    }
    u.path = unescape(rest, false)?;
    if escape_path(&u.path) != rest {
        u.raw_path = rest.into();
    }
    Ok(u)
}

fn valid_optional_port(p: &str) -> bool {
    p.is_empty()
        || p.strip_prefix(':')
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

fn check_host(host: &str) -> Result<(), String> {
    let port = if host.starts_with('[') {
        let Some(i) = host.rfind(']') else {
            return Err("missing ']' in host".into());
        };
        &host[i + 1..]
    } else {
        host.rfind(':').map_or("", |i| &host[i..])
    };
    if !valid_optional_port(port) {
        return Err(format!("invalid port {port:?} after host"));
    }
    Ok(())
}

/// Go's `unescape` for paths (`query`: a query component, where `+` is a space).
fn unescape(s: &str, query: bool) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(x) if b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() => {
                        out.push(x);
                        i += 3;
                    }
                    _ => {
                        let end = (i + 3).min(b.len());
                        return Err(format!(
                            "invalid URL escape {:?}",
                            String::from_utf8_lossy(&b[i..end])
                        ));
                    }
                }
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `shouldEscape` in `encodePath` mode.
fn path_byte_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_'
                | b'.'
                | b'~'
                | b'$'
                | b'&'
                | b'+'
                | b','
                | b'/'
                | b':'
                | b';'
                | b'='
                | b'@'
        )
}

fn escape_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for &c in p.as_bytes() {
        if path_byte_ok(c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Go's `URL.EscapedPath`: the path as written when that is a valid encoding of it.
fn escaped_path(u: &Url) -> String {
    let valid = |s: &str| {
        s.bytes().all(|c| {
            path_byte_ok(c) || matches!(c, b'!' | b'\'' | b'(' | b')' | b'*' | b'[' | b']' | b'%')
        })
    };
    if !u.raw_path.is_empty()
        && valid(&u.raw_path)
        && unescape(&u.raw_path, false).as_deref() == Ok(u.path.as_str())
    {
        return u.raw_path.clone();
    }
    if u.path == "*" {
        return "*".into();
    }
    escape_path(&u.path)
}

/// Go's `url.ParseQuery`, skipping what does not parse.
fn query(raw: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for part in raw.split('&') {
        if part.is_empty() || part.contains(';') {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if let (Ok(k), Ok(v)) = (unescape(k, true), unescape(v, true)) {
            out.entry(k).or_default().push(v);
        }
    }
    out
}

fn split_host_port(host: &str) -> (&str, &str) {
    let (mut h, port) = match host.rfind(':') {
        Some(i) if valid_optional_port(&host[i..]) => (&host[..i], &host[i + 1..]),
        _ => (host, ""),
    };
    if h.starts_with('[') && h.ends_with(']') {
        h = &h[1..h.len() - 1];
    }
    (h, port)
}

fn to_url<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = string_arg(&args, "url")?;
    let wrap = |e: String| {
        ExecutionError::function_error(
            "url",
            format!("URL parse error during conversion from string: parse {s:?}: {e}"),
        )
    };
    parse_url(&s, true).map_err(wrap)?;
    // parsed again as `url.Parse` does: ParseRequestURI keeps a fragment in the path
    let before_fragment = s.split_once('#').map_or(s.as_str(), |(b, _)| b);
    let u = parse_url(before_fragment, false).map_err(wrap)?;
    out(CelValue::Opaque(Arc::new(u)))
}

/// Go's `url.ParseRequestURI` as a check (the `uri` format).
pub(super) fn parse_request_uri(s: &str) -> Result<(), String> {
    parse_url(s, true).map(|_| ())
}

fn is_url<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let s = string_arg(&args, "isURL")?;
    out(CelValue::Bool(parse_url(&s, true).is_ok()))
}

fn with_url<'b, 'v>(
    args: Args<'b, 'v>,
    function: &str,
    f: impl FnOnce(&Url) -> CelValue,
) -> Out<'b, 'v> {
    match values(&args)?.first() {
        Some(CelValue::Opaque(o)) => match o.downcast_ref::<Url>() {
            Some(u) => out(f(u)),
            None => Err(no_overload(function)),
        },
        _ => Err(no_overload(function)),
    }
}

fn url_scheme<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_url(args, "getScheme", |u| CelValue::from(u.scheme.clone()))
}

fn url_host<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_url(args, "getHost", |u| CelValue::from(u.host.clone()))
}

fn url_hostname<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_url(args, "getHostname", |u| {
        CelValue::from(split_host_port(&u.host).0.to_string())
    })
}

fn url_port<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_url(args, "getPort", |u| {
        CelValue::from(split_host_port(&u.host).1.to_string())
    })
}

fn url_escaped_path<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_url(args, "getEscapedPath", |u| CelValue::from(escaped_path(u)))
}

fn url_query<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_url(args, "getQuery", |u| {
        let m: HashMap<String, CelValue> = query(&u.raw_query)
            .into_iter()
            .map(|(k, v)| {
                let l: Vec<CelValue> = v.into_iter().map(CelValue::from).collect();
                (k, CelValue::List(Arc::new(l)))
            })
            .collect();
        CelValue::from(m)
    })
}
