"""Channel targets over several replicas (gateway.core.channels) and the config
that names them ([[peers]] endpoint as one address or several)."""

from __future__ import annotations

import json

import pydantic
import pytest

from gateway.config.models import PeerEntry
from gateway.core.channels import (
    BALANCED_SERVICE_CONFIG,
    RECONNECT_OPTIONS,
    EndpointError,
    balanced_options,
    balanced_target,
    split_endpoints,
)


class TestSplitEndpoints:
    """Repeated options and comma lists give one ordered list without duplicates."""

    def test_single_repeated_and_comma_forms(self) -> None:
        assert split_endpoints("127.0.0.1:7310") == ("127.0.0.1:7310",)
        assert split_endpoints(["a:1,b:2", " c:3 ", "a:1", ""]) == ("a:1", "b:2", "c:3")
        assert split_endpoints("") == ()


class TestBalancedTarget:
    """Literal addresses of one family make one list target; a DNS name stays a
    dns target on its own; the TLS name is the first endpoint's host."""

    def test_one_endpoint_is_its_own_target(self) -> None:
        target = balanced_target(["node-310000:7311"])
        assert (target.target, target.endpoints, target.tls_name) == (
            "node-310000:7311",
            ("node-310000:7311",),
            "node-310000",
        )

    def test_ipv4_list(self) -> None:
        target = balanced_target(["10.0.0.1:7311", "10.0.0.2:7312"])
        assert target.target == "ipv4:10.0.0.1:7311,10.0.0.2:7312"
        assert target.tls_name == "10.0.0.1"

    def test_ipv6_list(self) -> None:
        target = balanced_target(["[::1]:7311", "[fd00::2]:7311"])
        assert target.target == "ipv6:[::1]:7311,[fd00::2]:7311"
        assert target.tls_name == "::1"

    def test_a_name_first_covers_that_name_only(self) -> None:
        target = balanced_target(["yrd-node-330000:7331", "10.0.3.2:7331"])
        assert target.target == "yrd-node-330000:7331"
        assert target.endpoints == ("yrd-node-330000:7331",)

    def test_mixed_families_keep_the_first_family(self) -> None:
        target = balanced_target(["10.0.0.1:1", "node:2", "[::1]:3", "10.0.0.2:4"])
        assert target.target == "ipv4:10.0.0.1:1,10.0.0.2:4"

    @pytest.mark.parametrize("endpoints", [[], ["no-port"], ["host:"], [":7311"]])
    def test_unusable_lists_are_refused(self, endpoints: list[str]) -> None:
        with pytest.raises(EndpointError):
            balanced_target(endpoints)


class TestBalancedOptions:
    """Every channel asks for round robin over healthy replicas; a list target over
    TLS names the host its certificate must carry."""

    def test_service_config(self) -> None:
        assert json.loads(BALANCED_SERVICE_CONFIG) == {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": ""},
        }

    def test_tls_name_only_for_a_list_target(self) -> None:
        single = dict(balanced_options(balanced_target(["127.0.0.1:1"])))
        assert single == {"grpc.service_config": BALANCED_SERVICE_CONFIG, **dict(RECONNECT_OPTIONS)}
        listed = dict(
            balanced_options(
                balanced_target(["127.0.0.1:1", "127.0.0.1:2"]), options=(("grpc.x", 1),)
            )
        )
        assert listed["grpc.ssl_target_name_override"] == "127.0.0.1"
        assert listed["grpc.default_authority"] == "127.0.0.1"
        assert listed["grpc.x"] == 1
        plain = balanced_options(balanced_target(["127.0.0.1:1", "127.0.0.1:2"]), secure=False)
        assert "grpc.ssl_target_name_override" not in dict(plain)

    def test_a_short_reconnect_backoff_unless_the_caller_sets_one(self) -> None:
        # gRPC's default backoff grows to 120 s: a replica back from a restart
        # would wait that long for its callers.
        options = dict(balanced_options(balanced_target(["127.0.0.1:1"])))
        assert options["grpc.initial_reconnect_backoff_ms"] == 200
        assert options["grpc.max_reconnect_backoff_ms"] == 1_000
        mine = balanced_options(
            balanced_target(["127.0.0.1:1"]), options=(("grpc.max_reconnect_backoff_ms", 500),)
        )
        names = [name for name, _ in mine]
        assert names.count("grpc.max_reconnect_backoff_ms") == 1  # the caller's, once
        assert dict(mine)["grpc.max_reconnect_backoff_ms"] == 500
        assert dict(mine)["grpc.initial_reconnect_backoff_ms"] == 200

    def test_round_robin_without_health_checking(self) -> None:
        options = dict(balanced_options(balanced_target(["127.0.0.1:1"]), health_checked=False))
        assert json.loads(str(options["grpc.service_config"])) == {
            "loadBalancingConfig": [{"round_robin": {}}]
        }


class TestPeerEntryEndpoints:
    """``[[peers]] endpoint``: one host:port as before, or a list / comma list."""

    def test_one_endpoint_as_before(self) -> None:
        entry = PeerEntry(code="320000", endpoint="127.0.0.1:7321")
        assert entry.endpoint == "127.0.0.1:7321"
        assert entry.endpoints == ("127.0.0.1:7321",)

    @pytest.mark.parametrize(
        "given", [["10.0.2.1:7321", "10.0.2.2:7321"], "10.0.2.1:7321, 10.0.2.2:7321"]
    )
    def test_several(self, given: object) -> None:
        entry = PeerEntry.model_validate({"code": "320000", "endpoint": given})
        assert entry.endpoints == ("10.0.2.1:7321", "10.0.2.2:7321")

    @pytest.mark.parametrize(
        "given",
        [[], "", ["10.0.2.1"], [7321], [f"h{i}:1" for i in range(9)]],
    )
    def test_bad_lists_name_what_is_expected(self, given: object) -> None:
        with pytest.raises(pydantic.ValidationError) as caught:
            PeerEntry.model_validate({"code": "320000", "endpoint": given})
        assert "endpoint" in str(caught.value)
