"""Reading province config files: TOML parsed, validated into the models of
:mod:`gateway.config.models`, the key files they name checked; one
``ConfigError`` names the file, the key path, the value and what was expected."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.models import FederationConfig, ProvinceConfig, hide_password
from gateway.core.errors import ConfigError, format_problem


def _problems(path: Path, exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        expected = error["msg"]
        expected = expected.removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            expected = "no such key (unknown keys are refused)"
        elif error["type"] == "missing":
            expected = "this required key"
            lines.append(f"{path}: {key}: missing, expected {expected}")
            continue
        # A database URL's password is never shown (it is refused in the file, too).
        lines.append(format_problem(path, key, hide_password(error.get("input")), expected))
    return lines


def parse_province_file(path: Path) -> ProvinceConfig:
    """Read and validate one province file; raise ConfigError naming every problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot be read: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    return validate_province(raw, path)


def validate_province(raw: Mapping[str, Any], path: Path) -> ProvinceConfig:
    data = dict(raw)
    data["source"] = path
    try:
        config = ProvinceConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(_problems(path, exc)) from exc
    problems = _check_files(config)
    if problems:
        raise ConfigError(problems)
    return config


def _check_files(config: ProvinceConfig) -> list[str]:
    from gateway.core.crypto import load_public_key

    problems = []
    keys = [(f"signing.public_keys.{i}", k) for i, k in enumerate(config.signing.public_keys)] + [
        (f"eid.issuer_keys.{i}", k) for i, k in enumerate(config.eid.issuer_keys)
    ]
    if config.certificate is not None:
        keys += [
            (f"certificate.seal_keys.{i}", k) for i, k in enumerate(config.certificate.seal_keys)
        ]
    for where, key in keys:
        try:
            load_public_key(key.public_key.read_bytes())
        except OSError:
            problems.append(
                format_problem(
                    config.source, f"{where}.public_key", str(key.public_key), "a readable PEM file"
                )
            )
        except ValueError as exc:
            problems.append(
                format_problem(config.source, f"{where}.public_key", str(key.public_key), str(exc))
            )
    return problems


def load_own(own_file: Path) -> ProvinceConfig:
    """Read a node's own config file, with the checks only a node's own file needs
    (its private keys and TLS files exist). A node reads no other province's file:
    its peers' public facts come from their signed descriptors (the directory)."""
    own_file = own_file.resolve()
    me = parse_province_file(own_file)
    problems: list[str] = []
    if me.tls is not None:
        for key in ("certificate", "private_key", "ca"):
            path = getattr(me.tls, key)
            if not path.exists():
                problems.append(
                    format_problem(own_file, f"tls.{key}", str(path), "an existing PEM file")
                )
        if me.node.federation_endpoint is None:
            problems.append(
                format_problem(
                    own_file,
                    "node.federation_endpoint",
                    None,
                    "host:port of the mutual-TLS endpoint (with [tls])",
                )
            )
    elif me.peers:
        problems.append(
            format_problem(
                own_file,
                "tls",
                None,
                "a [tls] table (certificate, private_key, ca) when [[peers]] are named: "
                "descriptors are signed with the TLS key and checked against the CA",
            )
        )
    if me.signing.private_key is None:
        problems.append(
            format_problem(
                own_file,
                "signing.private_key",
                None,
                "the path of this node's signing key (PKCS#8 PEM)",
            )
        )
    elif not me.signing.private_key.exists():
        problems.append(
            format_problem(
                own_file,
                "signing.private_key",
                str(me.signing.private_key),
                "an existing PEM file",
            )
        )
    if problems:
        raise ConfigError(problems)
    return me


def load_federation(own_file: Path) -> FederationConfig:
    """A node's own config, with no peer in force yet (the directory adds them)."""
    return FederationConfig(me=load_own(own_file))


def check_files(files: list[Path]) -> list[str]:
    """Validate each file on its own (``yrd-gateway config check``); return problems."""
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            config = parse_province_file(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if config.code in seen:
            problems.append(
                format_problem(
                    path,
                    "province.code",
                    config.code,
                    f"a code not already used by {seen[config.code]}",
                )
            )
        seen[config.code] = path
    return problems
