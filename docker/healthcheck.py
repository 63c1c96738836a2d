#!/usr/bin/env python3
"""Container health probe for YRD Gateway nodes and simulators (``yrd-healthcheck``).

No grpc_health_probe binary exists in the image; this script does its job with
grpcio and grpcio-health-checking, which the gateway already depends on.
Exit 0 when healthy, 1 when not (one line on stderr says why), 2 on bad usage.

    yrd-healthcheck grpc ADDRESS... --ca FILE [--cert FILE --key FILE]
        gRPC health ``Check`` over TLS (CA as trust anchor; with a client
        certificate for a mutual-TLS endpoint); healthy when every address
        answers SERVING. ADDRESS defaults to $YRD_HEALTH_ADDRESS, --ca to
        $YRD_HEALTH_CA.

    yrd-healthcheck grpc --config FILE
        the same for a node, read from its province config: the ``endpoint``
        port with the ``[tls] ca``, and the ``federation_endpoint`` port with
        the node's own certificate (mutual TLS), both on 127.0.0.1.

    yrd-healthcheck http URL...
        an HTTP GET of each URL (the simulated back-ends); healthy when every
        one answers with a status below 500 (a 404 still proves the server up).

    yrd-healthcheck [auto [--pid PID]]
        what the image's HEALTHCHECK runs: looks at the container's main
        process (PID 1, or PID) and probes a ``yrd-gateway serve --config FILE`` as
        ``grpc --config FILE`` and a ``python -m yrd_simulators`` on the
        ports it was given; anything else (``--help``, ``demo``) is healthy.

The endpoints' certificates name ``localhost`` and 127.0.0.1, so probing from
inside the container verifies the server certificate normally. From elsewhere,
``--server-name yrd-node-310000`` checks against another name.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

SIMULATOR_PORT_OPTIONS = ("--eid-port", "--fund-port", "--cert-port", "--case-port")


class Unhealthy(Exception):
    """The probe's one-line reason."""


def probe_grpc(
    address: str,
    *,
    ca: bytes,
    certificate: bytes | None = None,
    key: bytes | None = None,
    server_name: str | None = None,
    service: str = "",
    timeout: float = 3.0,
) -> None:
    import grpc  # imported here: the http probe must not need grpcio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=certificate
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                return  # serving at its max_concurrent_calls and shedding the rest: alive
            raise Unhealthy(f"{address}: {exc.code().name}: {exc.details()}") from None
    if answer.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        raise Unhealthy(f"{address}: {status}")


def probe_http(url: str, *, timeout: float = 3.0) -> None:
    if not url.startswith(("http://", "https://")):
        raise Unhealthy(f"{url}: not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked above
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise Unhealthy(f"{url}: {getattr(exc, 'reason', exc)}") from None
    if status >= 500:
        raise Unhealthy(f"{url}: HTTP {status}")


def _port(endpoint: str) -> str:
    return endpoint.rpartition(":")[2]


def node_targets(
    config_file: Path, listen: str | None = None, federation_listen: str | None = None
) -> list[tuple[str, Path, Path | None, Path | None]]:
    """(address, ca, certificate, key) to probe for the node configured in ``config_file``."""
    try:
        config = tomllib.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Unhealthy(f"{config_file}: cannot be read: {exc}") from None
    node, tls = config.get("node", {}), config.get("tls")
    base = config_file.parent
    if not tls:
        raise Unhealthy(f"{config_file}: no [tls]; this probe speaks TLS only")
    ca = base / tls["ca"]
    endpoint = listen or node.get("endpoint")
    if not endpoint:
        raise Unhealthy(f"{config_file}: node.endpoint missing")
    targets: list[tuple[str, Path, Path | None, Path | None]] = [
        (f"127.0.0.1:{_port(endpoint)}", ca, None, None)
    ]
    federation_endpoint = federation_listen or node.get("federation_endpoint")
    if federation_endpoint:
        targets.append(
            (
                f"127.0.0.1:{_port(federation_endpoint)}",
                ca,
                base / tls["certificate"],
                base / tls["private_key"],
            )
        )
    return targets


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def auto(timeout: float, pid: int = 1) -> str:
    """Probe what process ``pid`` (the container's main process) runs; say what was checked."""
    proc = Path(f"/proc/{pid}")
    try:
        raw = (proc / "cmdline").read_bytes()
    except OSError:
        return f"no {proc}/cmdline: nothing to probe"
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if "serve" in argv and _option(argv, "--config"):
        config = Path(_option(argv, "--config") or "")
        if not config.is_absolute():
            config = proc / "cwd" / config  # relative to the main process's folder
        listen = _option(argv, "--listen"), _option(argv, "--federation-listen")
        return run_node(config, timeout, *listen)
    if "yrd_simulators" in argv:
        urls = []
        host = "127.0.0.1"
        for option in SIMULATOR_PORT_OPTIONS:
            port = _option(argv, option)
            if port and port != "0":
                path = "/residents" if option == "--eid-port" else "/"
                urls.append(f"http://{host}:{port}{path}")
        for url in urls:
            probe_http(url, timeout=timeout)
        return f"simulators answer: {', '.join(urls) or 'no fixed ports to probe'}"
    return f"nothing to probe for {' '.join(argv[:3])}"


def run_node(
    config: Path, timeout: float, listen: str | None = None, federation_listen: str | None = None
) -> str:
    checked = []
    for address, ca, certificate, key in node_targets(config, listen, federation_listen):
        probe_grpc(
            address,
            ca=ca.read_bytes(),
            certificate=certificate.read_bytes() if certificate else None,
            key=key.read_bytes() if key else None,
            timeout=timeout,
        )
        checked.append(address + (" (mutual TLS)" if certificate else ""))
    return "SERVING: " + ", ".join(checked)


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=3.0, help="seconds per probe (3)")
    parser = argparse.ArgumentParser(
        prog="yrd-healthcheck", description=(__doc__ or "").split("\n\n")[0]
    )
    modes = parser.add_subparsers(dest="mode")
    grpc_mode = modes.add_parser("grpc", parents=[common], help="gRPC health over TLS")
    grpc_mode.add_argument("addresses", nargs="*", metavar="ADDRESS", help="host:port")
    grpc_mode.add_argument("--ca", help="CA certificate (PEM); default $YRD_HEALTH_CA")
    grpc_mode.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    grpc_mode.add_argument("--key", help="client private key (PEM), for mutual TLS")
    grpc_mode.add_argument("--server-name", help="name to verify the server certificate for")
    grpc_mode.add_argument("--service", default="", help="health service name ('' = server)")
    grpc_mode.add_argument("--config", type=Path, help="a node's province config: probe it")
    http_mode = modes.add_parser("http", parents=[common], help="HTTP GET answers below 500")
    http_mode.add_argument("urls", nargs="+", metavar="URL")
    auto_mode = modes.add_parser(
        "auto", parents=[common], help="probe what the main process runs (default)"
    )
    auto_mode.add_argument("--pid", type=int, default=1, help="that process (default 1)")
    args = parser.parse_args(argv)
    timeout: float = getattr(args, "timeout", 3.0)
    try:
        if args.mode == "grpc":
            if args.config is not None:
                print(run_node(args.config, timeout))
                return 0
            addresses = args.addresses or [
                a for a in os.environ.get("YRD_HEALTH_ADDRESS", "").split(",") if a
            ]
            ca_file = args.ca or os.environ.get("YRD_HEALTH_CA")
            if not addresses or not ca_file:
                parser.error("grpc needs ADDRESS and --ca (or YRD_HEALTH_ADDRESS, YRD_HEALTH_CA)")
            if (args.cert is None) != (args.key is None):
                parser.error("--cert and --key go together")
            ca = Path(ca_file).read_bytes()
            certificate = Path(args.cert).read_bytes() if args.cert else None
            key = Path(args.key).read_bytes() if args.key else None
            for address in addresses:
                probe_grpc(
                    address,
                    ca=ca,
                    certificate=certificate,
                    key=key,
                    server_name=args.server_name,
                    service=args.service,
                    timeout=timeout,
                )
            print("SERVING: " + ", ".join(addresses))
        elif args.mode == "http":
            for url in args.urls:
                probe_http(url, timeout=timeout)
            print("up: " + ", ".join(args.urls))
        else:
            print(auto(timeout, getattr(args, "pid", 1)))
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
