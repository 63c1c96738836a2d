"""Channels over every replica of a node: gRPC's own round-robin load balancing
with client-side health checking.

A province may run several replicas of its node behind several addresses (or
one DNS name that resolves to all of them). One channel reaches them all: its
target lists every address (``ipv4:10.0.0.1:7311,10.0.0.2:7311``) or names the
DNS name (``dns:///node.example:7311``, every address it resolves to), and its
service config asks for ``round_robin`` over the subchannels that are READY and
whose gRPC health service (service name ``""``) says SERVING. A replica that
dies or goes NOT_SERVING (stopping, or its store cannot write) leaves the
rotation; a call already sent to it fails with UNAVAILABLE, a fault the caller
retries and that lands on another replica.

TLS: gRPC checks one name per channel. It is the host of the first endpoint
(the owner's preferred one), so every replica must present a certificate valid
for that name -- replicas of one province share one certificate, which then
names every published host. The guarantee is the one a single address gives:
the server holds a certificate of the trusted CA valid for the name checked.

Nothing here imports the node: examples (local clients) use it as well.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import grpc

#: The service config of every balanced channel: round robin over the healthy
#: replicas (gRPC health checking of the server's overall status, service "").
#: grpc-python honours ``healthCheckConfig`` with no further channel argument
#: (``grpc.inhibit_health_checking`` would turn it off). Each connected replica
#: then holds one Health/Watch stream from the channel, a call in flight there.
BALANCED_SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)
#: Round robin over the connected replicas, without health checking.
ROUND_ROBIN_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})

ChannelOption = tuple[str, str | int]


class EndpointError(ValueError):
    """An endpoint list that cannot become a channel target."""


def split_endpoints(values: str | Iterable[str]) -> tuple[str, ...]:
    """Endpoints from ``"a:1,b:2"`` or repeated values (each may be a comma list),
    blanks dropped, duplicates removed, order kept."""
    items = [values] if isinstance(values, str) else list(values)
    seen: dict[str, None] = {}
    for item in items:
        for part in item.split(","):
            if part.strip():
                seen.setdefault(part.strip(), None)
    return tuple(seen)


def _host_port(endpoint: str) -> tuple[str, str]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise EndpointError(f"{endpoint!r}: expected host:port")
    return host, port


def _family(host: str) -> Literal["ipv4", "ipv6", "dns"]:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return "dns"
    return "ipv4" if address.version == 4 else "ipv6"


@dataclass(frozen=True)
class BalancedTarget:
    """A gRPC target over a node's replicas and the TLS name its channel checks."""

    #: The channel target: ``ipv4:a:p,b:q``, ``ipv6:[a]:p,[b]:q`` or one ``host:port``
    #: (gRPC's default dns resolver).
    target: str
    #: The endpoints the target covers (a subset of those given: see :func:`balanced_target`).
    endpoints: tuple[str, ...]
    #: The host the server certificate must name (the first endpoint's).
    tls_name: str


def balanced_target(endpoints: Sequence[str]) -> BalancedTarget:
    """The one target over ``endpoints`` (in order of preference).

    Literal addresses of one family make a list target. A DNS name cannot share
    a target with other endpoints, so when the first endpoint is a name, or the
    list mixes families, the target covers the endpoints of the first
    endpoint's kind only (a name alone: the dns resolver round-robins over every
    address it resolves to). Publish either literal addresses or one name.
    """
    if not endpoints:
        raise EndpointError("at least one host:port")
    parsed = [(endpoint, *_host_port(endpoint)) for endpoint in endpoints]
    first_host = parsed[0][1]
    family = _family(first_host)
    tls_name = first_host[1:-1] if first_host.startswith("[") else first_host
    if family == "dns":
        return BalancedTarget(parsed[0][0], (parsed[0][0],), tls_name)
    kept = tuple(endpoint for endpoint, host, _ in parsed if _family(host) == family)
    if len(kept) == 1:
        return BalancedTarget(kept[0], kept, tls_name)
    return BalancedTarget(f"{family}:{','.join(kept)}", kept, tls_name)


#: How soon a balanced channel tries a replica again after losing it: gRPC's
#: default backoff starts at 1 s and grows to 120 s, so a replica back after a
#: restart could wait minutes for its callers, and its twin dying meanwhile
#: would leave them with none. Here it starts at 0.2 s and stays at most 1 s
#: (a connection attempt a second to a dead address costs nothing).
RECONNECT_OPTIONS: tuple[ChannelOption, ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


def balanced_options(
    target: BalancedTarget,
    *,
    secure: bool = True,
    options: Sequence[ChannelOption] = (),
    health_checked: bool = True,
) -> tuple[ChannelOption, ...]:
    """Channel options for ``target``: ``options``, the balanced service config
    (without health checking if not ``health_checked``), a short reconnect
    backoff unless ``options`` set one (:data:`RECONNECT_OPTIONS`) and, for a
    list target over TLS, the name the server certificate must carry (a list
    target has no single host of its own to check)."""
    config = BALANCED_SERVICE_CONFIG if health_checked else ROUND_ROBIN_SERVICE_CONFIG
    given = {name for name, _ in options}
    extra: list[ChannelOption] = [
        ("grpc.service_config", config),
        *(option for option in RECONNECT_OPTIONS if option[0] not in given),
    ]
    if secure and target.target != target.endpoints[0]:
        extra.append(("grpc.ssl_target_name_override", target.tls_name))
        extra.append(("grpc.default_authority", target.tls_name))
    return (*options, *extra)


def balanced_aio_channel(
    endpoints: Sequence[str],
    credentials: grpc.ChannelCredentials | None,
    *,
    options: Sequence[ChannelOption] = (),
    health_checked: bool = True,
) -> grpc.aio.Channel:
    """An asyncio channel over every replica at ``endpoints`` (TLS unless
    ``credentials`` is None); see :func:`balanced_options`."""
    target = balanced_target(endpoints)
    full = balanced_options(
        target, secure=credentials is not None, options=options, health_checked=health_checked
    )
    if credentials is None:
        return grpc.aio.insecure_channel(target.target, options=full)
    return grpc.aio.secure_channel(target.target, credentials, options=full)


def balanced_channel(
    endpoints: Sequence[str],
    credentials: grpc.ChannelCredentials | None,
    *,
    options: Sequence[ChannelOption] = (),
    health_checked: bool = True,
) -> grpc.Channel:
    """A blocking channel over every replica at ``endpoints`` (local clients)."""
    target = balanced_target(endpoints)
    full = balanced_options(
        target, secure=credentials is not None, options=options, health_checked=health_checked
    )
    if credentials is None:
        return grpc.insecure_channel(target.target, options=full)
    return grpc.secure_channel(target.target, credentials, options=full)
