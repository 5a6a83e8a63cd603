"""SSRF guard for URLs that come from requests (callback URLs), not for configured endpoints.

Refused: loopback, private, link-local (169.254.169.254 and other metadata services), unique-local,
unspecified, multicast, reserved, shared (100.64/10) and any other address that is not globally
routable; also in IPv6 forms that carry an IPv4 address (::ffff:127.0.0.1, 6to4, NAT64), and in
every spelling browsers and inet_aton accept (2130706433, 0x7f000001, 017700000001, 127.1).
Host names ending in localhost, .local or .internal are refused without a DNS lookup.

Two entry points: `check_url` (sync, no DNS) at submit time, and `resolve_and_check` (async) at
delivery, which resolves the name, checks every address and returns a Target pinned to one checked
address, so a second DNS answer (rebinding) cannot redirect the connection. `allow_hosts` entries
(names, *.suffix, IPs, CIDRs) bypass the refusal.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from openhqm.errors import UnsafeURL, UpstreamUnavailable
from openhqm.forward.auth_settings import parse_http_url

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
DNS_TIMEOUT_S = 5.0


def _number(part: str) -> int | None:
    """One part of a loose IPv4 host: decimal, 0x hex, or octal with a leading 0 (WHATWG URL rules)."""
    lower = part.lower()
    if lower.startswith("0x"):
        digits, base = lower[2:] or "0", 16
    elif len(lower) > 1 and lower.startswith("0"):
        digits, base = lower[1:], 8
    else:
        digits, base = lower, 10
    try:
        return int(digits, base) if digits.isascii() and digits.isalnum() else None
    except ValueError:
        return None


def parse_loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """127.1, 2130706433, 0x7f000001, 0177.0.0.1 ...; None when `host` is not numeric."""
    parts = host.split(".")
    if parts and parts[-1] == "":
        parts.pop()
    if not parts or len(parts) > 4:
        return None
    numbers = [_number(part) for part in parts]
    if any(n is None for n in numbers):
        return None
    *head, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(parts)):
        return None
    value = last
    for index, n in enumerate(head):
        value += n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _looks_numeric(host: str) -> bool:
    last = host.rstrip(".").rsplit(".", 1)[-1].lower()
    return last.isdigit() or (last.startswith("0x") and all(c in "0123456789abcdef" for c in last[2:]))


def parse_ip(host: str) -> Address | None:
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return parse_loose_ipv4(host)


def refusal(ip: Address) -> str | None:
    """Why a connection to `ip` is refused, or None for a globally routable address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and (reason := refusal(embedded)):
            return f"{reason} (IPv4 {embedded} inside IPv6)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "loopback"
    if ip in _METADATA:
        return "a cloud metadata service address"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _UNIQUE_LOCAL:
        return "unique-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if ip in _SHARED:
        return "shared address space (100.64.0.0/10)"
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True, slots=True)
class AllowList:
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[str] | AllowList) -> AllowList:
        if isinstance(entries, AllowList):
            return entries
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        for entry in entries:
            entry = entry.lower().rstrip(".")
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if entry.startswith("*."):
                    suffixes.append(entry[1:])
                else:
                    names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host in self.names or host.endswith(self.suffixes)

    def allows_ip(self, ip: Address) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect: `url` as given, and the checked `address` to pin the connection to."""

    url: httpx.URL
    address: Address | None

    def connect_url(self) -> httpx.URL:
        return self.url if self.address is None else self.url.copy_with(host=str(self.address))

    def pin_headers(self) -> dict[str, str]:
        """The Host header naming the original host when the URL was rewritten to an address."""
        return {} if self.address is None else {"Host": self.url.netloc.decode("ascii")}

    def extensions(self) -> dict[str, str]:
        """TLS server name (SNI and certificate check) stays the original host name."""
        if self.address is None or self.url.scheme != "https":
            return {}
        return {"sni_hostname": self.url.host}


def _parse(url: str) -> tuple[httpx.URL, str]:
    try:
        parsed = parse_http_url(url)
    except ValueError as exc:
        raise UnsafeURL(f"callback URL: {exc}") from None
    return parsed, parsed.host.lower().rstrip(".")


def check_url(url: str, allow_hosts: Iterable[str] | AllowList = ()) -> httpx.URL:
    """Refuse (UnsafeURL, HTTP 400) a URL whose host is a refused address or a local name; no DNS."""
    parsed, host = _parse(url)
    allow = AllowList.of(allow_hosts)
    if allow.allows_name(host):
        return parsed
    ip = parse_ip(host)
    if ip is None and _looks_numeric(host):
        raise UnsafeURL(f"callback URL host {host!r} is neither a valid address nor a host name")
    if ip is not None:
        reason = None if allow.allows_ip(ip) else refusal(ip)
        if reason:
            raise UnsafeURL(f"callback URL host {host!r} is refused: {ip} is {reason}")
    elif host == "localhost" or host.endswith(_LOCAL_SUFFIXES):
        raise UnsafeURL(f"callback URL host {host!r} is refused: a local host name")
    return parsed


async def resolve_and_check(url: str, allow_hosts: Iterable[str] | AllowList = ()) -> Target:
    """check_url, then resolve the name and keep only permitted addresses; the Target pins the first."""
    allow = AllowList.of(allow_hosts)
    parsed = check_url(url, allow)
    host = parsed.host.lower().rstrip(".")
    if allow.allows_name(host):
        return Target(parsed, None)
    ip = parse_ip(host)
    if ip is not None:
        return Target(parsed, ip)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        async with asyncio.timeout(DNS_TIMEOUT_S):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise UpstreamUnavailable(f"cannot resolve callback host {host!r}: {exc or 'timed out'}") from exc
    addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
    for address in addresses:
        if allow.allows_ip(address) or refusal(address) is None:
            return Target(parsed, address)
    reasons = "; ".join(f"{a} is {refusal(a)}" for a in addresses)
    raise UnsafeURL(f"callback URL host {host!r} is refused: it resolves to {reasons}")
