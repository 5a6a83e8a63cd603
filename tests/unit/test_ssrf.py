"""The SSRF guard for callback URLs: literal checks (submit time) and resolving checks (delivery)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from openhqm.errors import UnsafeURL
from openhqm.forward.ssrf import check_url, parse_loose_ipv4, resolve_and_check

REFUSED = {
    "http://127.0.0.1/": "loopback",
    "http://127.8.9.10:8080/x": "loopback",
    "http://[::1]/": "loopback",
    "http://169.254.169.254/latest/meta-data/": "metadata",
    "http://169.254.1.1/": "link-local",
    "http://[fe80::1]/": "link-local",
    "http://10.0.0.1/": "private",
    "http://172.16.5.4/": "private",
    "http://192.168.1.1/": "private",
    "http://[fc00::1]/": "unique-local",
    "http://[fd00:ec2::254]/": "metadata",
    "http://0.0.0.0/": "unspecified",
    "http://0/": "unspecified",
    "http://[::]/": "unspecified",
    "http://224.0.0.1/": "multicast",
    "http://[ff02::1]/": "multicast",
    "http://240.0.0.1/": "private|reserved",  # Python 3.11 lists 240/4 as private
    "http://100.64.0.1/": "shared",
    "http://2130706433/": "loopback",
    "http://0x7f000001/": "loopback",
    "http://017700000001/": "loopback",
    "http://0177.0.0.1/": "not a valid URL",  # httpx refuses a dotted quad with a 4-digit part
    "http://127.1/": "loopback",
    "http://0x7f.1/": "loopback",
    "http://[::ffff:127.0.0.1]/": "loopback",
    "http://[::ffff:169.254.169.254]/": "metadata",
    "http://[64:ff9b::7f00:1]/": "loopback",
    "http://[2002:7f00:1::1]/": "loopback",
    "http://localhost/": "local host name",
    "http://LOCALHOST./": "local host name",
    "http://api.localhost/": "local host name",
    "http://printer.local/": "local host name",
    "http://metadata.google.internal/": "local host name",
    "http://1.2.3.4.5/": "neither a valid address",
    "http://256.0.0.1/": "not a valid URL",
    "http://0x100000000/": "neither a valid address",
}


@pytest.mark.parametrize(("url", "reason"), list(REFUSED.items()), ids=list(REFUSED))
def test_literal_check_refuses_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=reason) as info:
        check_url(url)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "url", ["ftp://example.com/", "file:///etc/passwd", "http://", "/relative", "gopher://x/"]
)
def test_only_absolute_http_urls_are_accepted(url: str) -> None:
    with pytest.raises(UnsafeURL, match="http"):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://93.184.216.34:8080/x",
        "https://[2606:4700::1111]/",
        "http://8.8.8.8/",
    ],
)
def test_literal_check_lets_public_hosts_through(url: str) -> None:
    check_url(url)


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:9000/", ["127.0.0.1"]),
        ("http://10.1.2.3/", ["10.0.0.0/8"]),
        ("http://[::ffff:10.1.2.3]/", ["10.0.0.0/8"]),
        ("http://localhost/", ["localhost"]),
        ("http://metadata.google.internal/", ["*.internal"]),
        ("http://[fd12::5]/", ["fd12::/16"]),
    ],
)
def test_allow_hosts_bypass_the_refusal(url: str, allow: list[str]) -> None:
    check_url(url, allow)


def test_allow_list_is_exact_not_a_substring() -> None:
    with pytest.raises(UnsafeURL):
        check_url("http://127.0.0.2/", ["127.0.0.1"])
    with pytest.raises(UnsafeURL):
        check_url("http://evil.localhost/", ["localhost"])


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("192.168.257", "192.168.1.1"),
        ("1.2.3.4.", "1.2.3.4"),
        ("0x", "0.0.0.0"),
    ],
)
def test_loose_ipv4_spellings_parse_like_browsers(host: str, address: str) -> None:
    assert parse_loose_ipv4(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "08", "1..2", "\u0663.1.1.1", "0x7g"])
def test_non_numeric_hosts_are_not_addresses(host: str) -> None:
    assert parse_loose_ipv4(host) is None


async def test_resolving_check_refuses_a_name_that_resolves_to_loopback() -> None:
    with pytest.raises(UnsafeURL, match="local host name"):
        await resolve_and_check("http://localhost:8080/")


async def test_resolving_check_refuses_this_machines_name_by_its_addresses() -> None:
    host = socket.gethostname()
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, 80)}
    if any(a.is_global for a in addresses):
        pytest.skip(f"{host} resolves to a public address here")
    with pytest.raises(UnsafeURL, match="resolves to"):
        await resolve_and_check(f"http://{host}:8080/")


async def test_resolving_check_pins_the_checked_address_and_keeps_the_host_name() -> None:
    host = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)}
    target = await resolve_and_check(f"https://{host}:8443/hook?x=1", [str(a) for a in addresses])
    assert str(target.address) in addresses
    assert target.connect_url().host == str(target.address)
    assert target.connect_url().raw_path == b"/hook?x=1"
    assert target.pin_headers() == {"Host": f"{host.lower()}:8443"}
    assert target.extensions() == {"sni_hostname": host.lower()}


async def test_resolving_check_skips_dns_for_an_allowed_name_and_literal_addresses() -> None:
    named = await resolve_and_check("http://localhost:1/", ["localhost"])
    literal = await resolve_and_check("http://93.184.216.34/")
    assert named.address is None and named.pin_headers() == {}
    assert literal.address == ipaddress.ip_address("93.184.216.34")
