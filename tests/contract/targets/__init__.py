"""One module per broker. Each defines:

- NAME, BULK_COUNT, ALLOWED_DUPLICATES;
- SERVICE: the tests/services.py name of the broker it connects to, or None for an in-process backend
  (then there is no connection to cut and the reconnect tests skip);
- `async make_settings(tmp_path, *, lease_s=None, address=None) -> Settings`: `lease_s` sets the
  broker's lease (visibility timeout, ack wait) where it has one, `address` ("host:port") replaces the
  broker's address, so a test can put a TCP proxy in between;
Optionally:
- PROXY: the proxy class to put in front of the broker (default tests.tcp_proxy.CuttableProxy);
- MIN_LEASE_S: the shortest lease the broker accepts; LEASE_CONSTANT: the dotted name of a lease that is
  a module constant rather than a setting (patched per test);
- UNTESTABLE: behaviour -> why this broker truly cannot show it (the test skips with that reason);
- `async end_session()`: removes what the target shares across the test session (what a test makes
  under its own queue name is removed by tests/contract/conftest.py's `queue` fixture);
- KNOWN_BUGS: test-name pattern -> the backend bug that fails it (strict xfail for this target only);
  RACY_BUGS the same for a bug that shows in some runs only (non-strict xfail).
"""

from __future__ import annotations

from urllib.parse import urlparse


def with_address(url: str, address: str | None) -> str:
    """`url` with its host:port replaced by `address` (credentials and path kept)."""
    if address is None:
        return url
    parsed = urlparse(url)
    credentials = parsed.netloc.rpartition("@")[0]
    return parsed._replace(netloc=f"{credentials}@{address}" if credentials else address).geturl()
