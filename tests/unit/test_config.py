"""Province configs: parse, validate into frozen models, one ConfigError naming the
file, the key path, the value and what was expected (STYLE practice 3)."""

from __future__ import annotations

import copy
import re
import shutil
import tomllib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.loading import (
    check_files,
    load_federation,
    parse_province_file,
    validate_province,
)
from gateway.config.models import FEDERATION_SERVICES, FederationConfig
from gateway.core.errors import ConfigError, GatewayError
from tests.paths import CONFIG_DIR, config_file, keys_dir
from tests.unit.conftest import AH, JS, PROVINCE_CODES, SH, ZJ

Raw = dict[str, Any]


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A private copy of province_configs/ (keys included) to break."""
    target = tmp_path / "province_configs"
    shutil.copytree(CONFIG_DIR, target)
    return target


@pytest.fixture(scope="module")
def shanghai_raw() -> Raw:
    return tomllib.loads((config_file(SH)).read_text(encoding="utf-8"))


def edit(path: Path, old: str, new: str) -> None:
    """Replace text in a config file; fail loudly if the shipped text has changed."""
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path.name} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def problems(raw: Raw, path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_province(raw, path)
    assert caught.value.message == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(raw: Raw, path: Path) -> str:
    found = problems(raw, path)
    assert len(found) == 1, found
    return found[0]


Mutation = Callable[[Raw], None]


def _set(*keys: str | int, value: object) -> Mutation:
    def mutate(raw: Raw) -> None:
        target: Any = raw
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _drop(*keys: str | int) -> Mutation:
    def mutate(raw: Raw) -> None:
        target: Any = raw
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


def _append(*keys: str | int, value: object) -> Mutation:
    def mutate(raw: Raw) -> None:
        target: Any = raw
        for key in keys:
            target = target[key]
        target.append(value)

    return mutate


_NAIVE = datetime(2026, 1, 1)  # a TOML local date-time (no offset), on purpose
_EARLY = datetime.fromisoformat("2025-01-01T00:00:00+00:00")

# (mutation, key path, what the message must say was expected, what it must show as the value)
BROKEN = [
    pytest.param(_set("colour", value="red"), "colour", "no such key", "'red'", id="unknown-key"),
    pytest.param(
        _set("node", "colour", value="red"),
        "node.colour",
        "no such key",
        "'red'",
        id="unknown-nested",
    ),
    pytest.param(
        _set("signing", "public_keys", 0, "comment", value="x"),
        "signing.public_keys.0.comment",
        "no such key",
        "'x'",
        id="unknown-key-in-array-table",
    ),
    pytest.param(
        _drop("province", "code"),
        "province.code",
        "missing, expected this required key",
        None,
        id="missing-code",
    ),
    pytest.param(
        _drop("node", "endpoint"),
        "node.endpoint",
        "missing, expected this required key",
        None,
        id="missing-endpoint",
    ),
    pytest.param(
        _drop("signing"), "signing", "missing, expected this required key", None, id="missing-table"
    ),
    pytest.param(
        _set("province", "code", value="31000"),
        "province.code",
        "pattern",
        "'31000'",
        id="code-short",
    ),
    pytest.param(
        _set("province", "code", value="31000A"),
        "province.code",
        "pattern",
        "'31000A'",
        id="code-letter",
    ),
    pytest.param(
        _set("province", "code", value="010000"),
        "province.code",
        "pattern",
        "'010000'",
        id="code-leading-zero",
    ),
    pytest.param(
        _set("province", "code", value="310115"),
        "province.code",
        "province-level GB/T 2260 code ending in 0000",
        "'310115'",
        id="code-county",
    ),
    pytest.param(
        _set("province", "code", value=310000), "province.code", "string", "310000", id="code-int"
    ),
    pytest.param(
        _set("node", "endpoint", value="localhost"),
        "node.endpoint",
        "host:port",
        "'localhost'",
        id="endpoint-no-port",
    ),
    pytest.param(
        _set("node", "endpoint", value="127.0.0.1:http"),
        "node.endpoint",
        "host:port",
        "'127.0.0.1:http'",
        id="endpoint-named-port",
    ),
    pytest.param(
        _set("node", "endpoint", value="http://127.0.0.1:7310"),
        "node.endpoint",
        "host:port",
        "'http://127.0.0.1:7310'",
        id="endpoint-url",
    ),
    pytest.param(
        _set("node", "max_clock_skew_seconds", value=0),
        "node.max_clock_skew_seconds",
        "greater than or equal to 1",
        "0",
        id="skew-zero",
    ),
    pytest.param(
        _set("signing", "public_keys", 0, "not_after", value=_EARLY),
        "signing.public_keys.0",
        "not_after later than not_before",
        None,
        id="not_after-before-not_before",
    ),
    pytest.param(
        _set("eid", "issuer_keys", 0, "not_before", value=_NAIVE),
        "eid.issuer_keys.0",
        "UTC instants",
        None,
        id="naive-instant",
    ),
    pytest.param(
        _set("signing", "public_keys", 0, "key_id", value="key id with spaces"),
        "signing.public_keys.0.key_id",
        "pattern",
        "'key id with spaces'",
        id="bad-key-id",
    ),
    pytest.param(
        _set("signing", "key_id", value="310000-sig-2099"),
        "signing",
        "'310000-sig-2099' to be one of signing.public_keys",
        None,
        id="own-key-not-published",
    ),
    pytest.param(
        _set("eid", "authority_url", value="ftp://127.0.0.1"),
        "eid.authority_url",
        "pattern",
        "'ftp://127.0.0.1'",
        id="authority-not-http",
    ),
    pytest.param(
        _set("services", "offers", value=["identity.CheckCredential", "bogus.Service"]),
        "services.offers",
        "federation service names from",
        "'bogus.Service'",
        id="unknown-offered-service",
    ),
    pytest.param(
        _set("services", "calls", value=["fund.Steal"]),
        "services.calls",
        "federation service names from",
        "'fund.Steal'",
        id="unknown-called-service",
    ),
    pytest.param(
        _append("clients", 0, "purposes", value="SHOPPING"),
        "clients.0.purposes",
        "purposes from",
        "'SHOPPING'",
        id="client-unknown-purpose",
    ),
    pytest.param(
        _set("clients", 0, "services", value=["yrd.identity.v1.Nope"]),
        "clients.0.services",
        "gRPC service names from",
        "'yrd.identity.v1.Nope'",
        id="client-unknown-service",
    ),
    pytest.param(
        _set("clients", 0, "token_sha256", value="dev-hotel-310000"),
        "clients.0.token_sha256",
        "pattern",
        "'dev-hotel-310000'",
        id="client-token-not-a-digest",
    ),
    pytest.param(
        _set("adapter", "colour", value=1),
        "adapter.colour",
        "no such key",
        "1",
        id="adapter-unknown",
    ),
    pytest.param(
        _append("peers", value={"code": "320000", "endpoint": "127.0.0.1:7399"}),
        "peers",
        "each peer code once, not '320000' again at peers.3.code",
        None,
        id="peer-duplicate",
    ),
    pytest.param(
        _append("peers", value={"code": "310000", "endpoint": "127.0.0.1:7399"}),
        "peers",
        "peer codes other than this province's own (310000)",
        None,
        id="peer-own-code",
    ),
    pytest.param(
        _set("peers", 0, "endpoint", value="https://js.example"),
        "peers.0.endpoint",
        "host:port",
        "'https://js.example'",
        id="peer-bad-endpoint",
    ),
    pytest.param(
        _set("peers", 0, "code", value="320100"),
        "peers.0.code",
        "a province-level GB/T 2260 code ending in 0000",
        "'320100'",
        id="peer-not-a-province",
    ),
    pytest.param(
        _set("peers", 0, "colour", value="red"),
        "peers.0.colour",
        "no such key",
        "'red'",
        id="peer-unknown-key",
    ),
    pytest.param(
        _set("directory", "refresh_seconds", value=0),
        "directory.refresh_seconds",
        "greater than or equal to 0.05",
        "0",
        id="directory-refresh-too-short",
    ),
    pytest.param(
        _set("directory", "validity_days", value=400),
        "directory.validity_days",
        "less than or equal to 365",
        "400",
        id="directory-validity-too-long",
    ),
]


class TestValidateProvince:
    """Each broken value is reported on one line: file, key path, value, expectation."""

    @pytest.mark.parametrize(("mutate", "key", "expected", "shown"), BROKEN)
    def test_names_file_key_value_and_expectation(
        self,
        configs: Path,
        shanghai_raw: Raw,
        mutate: Mutation,
        key: str,
        expected: str,
        shown: str | None,
    ) -> None:
        raw = copy.deepcopy(shanghai_raw)
        mutate(raw)
        path = config_file(SH, configs)

        found = problems(raw, path)

        line = next((p for p in found if p.startswith(f"{path}: {key}: ")), None)
        assert line is not None, f"no problem names {key!r}: {found}"
        assert expected in line
        if shown is not None:
            assert shown in line.partition(", expected ")[0].partition(": got ")[2]

    def test_every_problem_is_reported_at_once(self, configs: Path, shanghai_raw: Raw) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["node"]["endpoint"] = "nowhere"
        raw["province"]["code"] = "31"
        raw["colour"] = "red"
        found = problems(raw, config_file(SH, configs))
        keys = {line.split(": ")[1] for line in found}
        assert {"node.endpoint", "province.code", "colour"} <= keys

    def test_the_shipped_file_is_valid(self, configs: Path, shanghai_raw: Raw) -> None:
        config = validate_province(copy.deepcopy(shanghai_raw), config_file(SH, configs))
        assert config.code == SH
        assert config.source == config_file(SH, configs)

    def test_peers_directory_and_contact_of_the_shipped_file(
        self, configs: Path, shanghai_raw: Raw
    ) -> None:
        config = validate_province(copy.deepcopy(shanghai_raw), config_file(SH, configs))
        assert [(p.code, p.endpoint) for p in config.peers] == [
            (JS, "127.0.0.1:7321"),
            (ZJ, "127.0.0.1:7331"),
            (AH, "127.0.0.1:7341"),
        ]
        assert config.directory.refresh_seconds == 300
        assert config.directory.validity_days == 7
        assert config.province.contact == "gateway-operations@310000.yrd.example"

    def test_peers_and_directory_are_optional(self, configs: Path, shanghai_raw: Raw) -> None:
        raw = copy.deepcopy(shanghai_raw)
        del raw["peers"], raw["directory"], raw["province"]["contact"]
        config = validate_province(raw, config_file(SH, configs))
        assert config.peers == ()
        assert (config.directory.refresh_seconds, config.directory.validity_days) == (300, 7)
        assert config.province.contact == ""

    def test_config_error_is_a_gateway_error(self, configs: Path, shanghai_raw: Raw) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["colour"] = "red"
        with pytest.raises(GatewayError) as caught:
            validate_province(raw, config_file(SH, configs))
        assert isinstance(caught.value, ConfigError)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(code=st.text(max_size=8))
    def test_any_province_code_is_accepted_or_named(self, shanghai_raw: Raw, code: str) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["province"]["code"] = code
        # A province is not its own peer (tested above): drop a peer entry of that code.
        raw["peers"] = [peer for peer in raw["peers"] if peer["code"] != code]
        path = config_file(SH)
        try:
            config = validate_province(raw, path)
        except ConfigError as error:
            found = error.problems
        else:
            assert re.fullmatch(r"[1-9][0-9]0000", config.code)
            return
        assert len(found) == 1, found
        assert found[0].startswith(f"{path}: province.code: ")


class TestDisclosure:
    """A wrong purpose or attribute in [disclosure] is named in the error, so the
    operator can find it among the purposes of the table."""

    def test_unknown_purpose_is_named(self, configs: Path, shanghai_raw: Raw) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["disclosure"]["BOGUS_PURPOSE"] = ["age_over_18"]
        path = config_file(SH, configs)

        line = only_problem(raw, path)

        assert line.startswith(f"{path}: disclosure")
        assert "purposes from ['AGE_CHECK', 'GOVERNMENT_SERVICE', 'HOTEL_CHECK_IN']" in line
        assert "BOGUS_PURPOSE" in line

    def test_unknown_attribute_is_named(self, configs: Path, shanghai_raw: Raw) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["disclosure"]["GOVERNMENT_SERVICE"].append("shoe_size")
        path = config_file(SH, configs)

        line = only_problem(raw, path)

        assert line.startswith(f"{path}: disclosure")
        assert "attribute names from" in line
        assert "shoe_size" in line

    def test_known_purposes_and_attributes_are_accepted(
        self, configs: Path, shanghai_raw: Raw
    ) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["disclosure"] = {"AGE_CHECK": ["age_over_18"], "HOTEL_CHECK_IN": ["full_name"]}
        config = validate_province(raw, config_file(SH, configs))
        assert config.disclosure["HOTEL_CHECK_IN"] == ("full_name",)


class TestParseProvinceFile:
    """Reading a file: unreadable or invalid TOML and missing key files are named;
    relative paths resolve against the file's folder."""

    def test_invalid_toml(self, configs: Path) -> None:
        path = config_file(SH, configs)
        edit(path, "[node]", "[node")
        with pytest.raises(ConfigError) as caught:
            parse_province_file(path)
        (line,) = caught.value.problems
        assert line.startswith(f"{path}: not valid TOML")

    def test_unreadable_file(self, configs: Path) -> None:
        path = configs / "fujian.toml"
        with pytest.raises(ConfigError) as caught:
            parse_province_file(path)
        (line,) = caught.value.problems
        assert line.startswith(f"{path}: cannot be read")

    def test_missing_public_key_file(self, configs: Path) -> None:
        (keys_dir(SH, configs) / "signing.pub.pem").unlink()
        path = config_file(SH, configs)
        with pytest.raises(ConfigError) as caught:
            parse_province_file(path)
        (line,) = caught.value.problems
        assert line.startswith(f"{path}: signing.public_keys")
        assert "public_key" in line
        assert "expected a readable PEM file" in line

    def test_missing_eid_issuer_key_file(self, configs: Path) -> None:
        (keys_dir(SH, configs) / "eid-issuer.pub.pem").unlink()
        path = config_file(SH, configs)
        with pytest.raises(ConfigError) as caught:
            parse_province_file(path)
        (line,) = caught.value.problems
        assert line.startswith(f"{path}: eid.issuer_keys")
        assert "expected a readable PEM file" in line

    def test_missing_public_key_file_names_which_key_and_file(self, configs: Path) -> None:
        # Key rotation: the next key is published beside the current one, but its
        # file was not copied. The message must say which key and which file.
        path = config_file(SH, configs)
        edit(
            path,
            "[eid]",
            "[[signing.public_keys]]\n"
            'key_id = "310000-sig-2029"\n'
            'public_key = "keys/signing-2029.pub.pem"\n'
            "not_before = 2029-06-01T00:00:00Z\n"
            "not_after = 2033-01-01T00:00:00Z\n\n"
            "[eid]",
        )
        with pytest.raises(ConfigError) as caught:
            parse_province_file(path)
        (line,) = caught.value.problems
        assert "signing.public_keys.1.public_key" in line
        assert "signing-2029.pub.pem" in line

    def test_public_key_file_that_is_not_a_key(self, configs: Path) -> None:
        (keys_dir(SH, configs) / "signing.pub.pem").write_text("not a key\n", encoding="utf-8")
        path = config_file(SH, configs)
        with pytest.raises(ConfigError) as caught:
            parse_province_file(path)
        (line,) = caught.value.problems
        assert line.startswith(f"{path}: signing.public_keys")
        assert "PEM" in line

    def test_private_key_where_a_public_key_belongs(self, configs: Path) -> None:
        path = config_file(SH, configs)
        edit(path, 'public_key = "keys/signing.pub.pem"', 'public_key = "province.toml"')
        with pytest.raises(ConfigError) as caught:
            parse_province_file(path)
        assert caught.value.problems[0].startswith(f"{path}: signing.public_keys")

    def test_relative_paths_resolve_against_the_files_folder(self, configs: Path) -> None:
        config = parse_province_file(config_file(SH, configs))
        published = config.signing.public_keys[0].public_key
        assert published.is_absolute()
        assert published == (keys_dir(SH, configs) / "signing.pub.pem").resolve()
        assert config.signing.private_key == (keys_dir(SH, configs) / "signing.key.pem").resolve()

    def test_models_are_frozen(self, configs: Path) -> None:
        config = parse_province_file(config_file(SH, configs))
        with pytest.raises(pydantic.ValidationError):
            config.node.endpoint = "evil:1"  # type: ignore[misc]  # assigning is the point


class TestLoadFederation:
    """A node loads its own file only: its peers are named by code and bootstrap
    endpoint, their facts come from their signed descriptors (the directory)."""

    @pytest.mark.parametrize("own", PROVINCE_CODES)
    def test_shipped_configs_load_from_each_provinces_view(self, own: str) -> None:
        federation = load_federation(config_file(own))
        assert isinstance(federation, FederationConfig)
        assert federation.own == own
        assert federation.me.code == own
        assert set(federation.me.services.offers) <= set(FEDERATION_SERVICES)
        assert federation.peer_codes == tuple(c for c in PROVINCE_CODES if c != own)
        assert federation.peers == {}  # none in force until the directory fetched them
        assert federation.peer("350000") is None

    def test_own_private_key_file_missing(self, configs: Path) -> None:
        (keys_dir(SH, configs) / "signing.key.pem").unlink()
        with pytest.raises(ConfigError) as caught:
            load_federation(config_file(SH, configs))
        (line,) = caught.value.problems
        assert line.startswith(f"{config_file(SH, configs)}: signing.private_key: ")
        assert "expected an existing PEM file" in line

    def test_own_private_key_not_configured(self, configs: Path) -> None:
        edit(config_file(SH, configs), 'private_key = "keys/signing.key.pem"\n', "")
        with pytest.raises(ConfigError) as caught:
            load_federation(config_file(SH, configs))
        (line,) = caught.value.problems
        assert "signing.private_key: got None" in line
        assert "this node's signing key" in line

    def test_no_other_provinces_file_is_read(self, configs: Path) -> None:
        # Broken, missing or duplicated: a peer's file is not this node's business.
        edit(config_file(JS, configs), 'endpoint = "', 'endpoint = "http://')
        edit(config_file(ZJ, configs), "[node]", "[node")
        shutil.copytree(configs / SH, configs / "shanghai-copy")
        shutil.rmtree(configs / AH)
        federation = load_federation(config_file(SH, configs))
        assert federation.own == SH
        assert federation.peer_codes == (JS, ZJ, AH)

    def test_peers_need_tls(self, configs: Path) -> None:
        text = config_file(SH, configs).read_text(encoding="utf-8")
        start = text.index("[tls]")
        end = text.index("\n[", start + 1)
        config_file(SH, configs).write_text(text[:start] + text[end + 1 :], encoding="utf-8")
        with pytest.raises(ConfigError) as caught:
            load_federation(config_file(SH, configs))
        (line,) = caught.value.problems
        assert ": tls: " in line
        assert "when [[peers]] are named" in line


class TestCheckFiles:
    """`config check` validates each file on its own and returns every problem."""

    def test_shipped_files_have_no_problems(self) -> None:
        assert check_files(sorted(CONFIG_DIR.glob("*/province.toml"))) == []

    def test_reports_instead_of_raising(self, configs: Path) -> None:
        edit(config_file(AH, configs), "[node]", "[node")
        shutil.copytree(configs / JS, configs / "jiangsu-copy")
        found = check_files(sorted(configs.glob("*/province.toml")))
        assert any(p.startswith(f"{config_file(AH, configs)}: not valid TOML") for p in found)
        assert any("province.code: got '320000'" in p for p in found)
        assert len(found) == 2


class TestNodeStore:
    """``[node] store`` is a folder or a postgresql:// URL; ``replica`` and
    ``local_dir`` place a replica's own files when the store is a database."""

    URL = "postgresql://yrd@db.example:5432/yrd_shanghai"

    def test_a_folder_store_keeps_the_nodes_files_in_it(
        self, configs: Path, shanghai_raw: Raw
    ) -> None:
        node = validate_province(copy.deepcopy(shanghai_raw), config_file(SH, configs)).node
        assert isinstance(node.store, Path)
        assert node.store.is_absolute()
        assert node.local_folder == node.store
        assert (node.store_kind, node.replica) == ("sqlite", "1")

    def test_a_database_url_with_local_dir_by_default(
        self, configs: Path, shanghai_raw: Raw
    ) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["node"]["store"] = self.URL
        raw["node"]["replica"] = "b-2"
        path = config_file(SH, configs)
        node = validate_province(raw, path).node
        assert node.store == self.URL
        assert node.store_kind == "postgresql"
        assert node.local_folder == (path.parent / "var" / f"{SH}-b-2").resolve()

    def test_local_dir_resolves_against_the_files_folder(
        self, configs: Path, shanghai_raw: Raw
    ) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["node"]["store"] = self.URL
        raw["node"]["local_dir"] = "here/r1"
        path = config_file(SH, configs)
        assert validate_province(raw, path).node.local_folder == (path.parent / "here/r1").resolve()

    def test_a_password_in_the_url_is_refused_and_not_shown(
        self, configs: Path, shanghai_raw: Raw
    ) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["node"]["store"] = "postgresql://yrd:s3cret-pw@db.example/yrd"
        line = only_problem(raw, config_file(SH, configs))
        assert "node.store" in line
        assert "PGPASSWORD" in line
        assert "pgpass" in line
        assert "s3cret-pw" not in line

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("store", "mysql://yrd@db/yrd", "postgresql://"),
            ("store", "postgresql://yrd@db", "naming the database"),
            ("replica", "a b", "pattern"),
            ("replica", "", "pattern"),
            ("local_dir", "elsewhere", "postgresql:// store"),
        ],
    )
    def test_bad_values_are_named(
        self, configs: Path, shanghai_raw: Raw, key: str, value: str, expected: str
    ) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["node"][key] = value
        line = only_problem(raw, config_file(SH, configs))
        assert f"node.{key}" in line
        assert expected in line

    def test_a_password_in_a_refused_section_is_not_shown(
        self, configs: Path, shanghai_raw: Raw
    ) -> None:
        raw = copy.deepcopy(shanghai_raw)
        raw["node"]["store"] = "postgresql://yrd:s3cret-pw@db.example/yrd"
        raw["node"]["colour"] = "red"
        found = problems(raw, config_file(SH, configs))
        assert found
        assert not any("s3cret-pw" in line for line in found), found
