"""Fan-out groups (`fanout.<group>: ["endpoint:<name>" | "handler:<name>", ...]`): what a member names.

Endpoint members are checked with the rest of the configuration; handlers are registered by the
user's module after the settings are read, so handler members are checked when the runtime starts
(`check_handlers`). The request side lives in listener/fanout.py.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from openhqm.errors import ConfigError
from openhqm.forward.settings import ProxySettings

KINDS = ("endpoint", "handler")


def split_member(member: str) -> tuple[str | None, str | None]:
    """(endpoint, handler) of a member: exactly one is set."""
    kind, _, name = member.partition(":")
    return (name, None) if kind == "endpoint" else (None, name)


def check_groups(groups: dict[str, list[str]], proxy: ProxySettings | None) -> dict[str, list[str]]:
    """`groups` as they are, or ValueError naming the first bad member (endpoints are those of
    `proxy`, none when proxy mode is off)."""
    endpoints = proxy.endpoints if proxy is not None and proxy.enabled else None
    for group, members in groups.items():
        if not members:
            raise ValueError(f"fanout.{group} has no members")
        if len(set(members)) != len(members):
            raise ValueError(f"fanout.{group} names a member twice")
        for member in members:
            kind, _, name = member.partition(":")
            if kind not in KINDS or not name:
                raise ValueError(f"fanout.{group} member {member!r} is neither 'endpoint:<name>' nor "
                                 "'handler:<name>'")
            if kind == "endpoint" and endpoints is None:
                raise ValueError(f"fanout.{group} member {member!r} needs proxy mode (proxy.enabled: true)")
            if kind == "endpoint" and endpoints is not None and name not in endpoints:
                valid = ", ".join(sorted(endpoints)) or "none"
                raise ValueError(f"fanout.{group} member {member!r} names no configured endpoint "
                                 f"(proxy.endpoints: {valid})")
    return groups


def check_handlers(groups: Mapping[str, list[str]], handlers: Collection[str]) -> None:
    """ConfigError at startup for a handler member no registered handler answers."""
    for group, members in groups.items():
        for member in members:
            _, handler = split_member(member)
            if handler is not None and handler not in handlers:
                valid = ", ".join(sorted(handlers)) or "none"
                raise ConfigError(f"fanout.{group} member {member!r} names no registered handler "
                                  f"(registered: {valid})")
