"""The web console's parts without a browser: sessions, CSRF, languages, charts,
escaping, its config section, and a node refusing a console without TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config.loading import parse_province_file
from gateway.config.models import ConsoleSection, FederationConfig
from gateway.core.metrics import NodeMetrics
from gateway.server.console.charts import MetricsSampler, Sample, minutes, quantile, read_sample
from gateway.server.console.i18n import CATALOGUE, choose_language, language_from_header, translate
from gateway.server.console.pages import View, exchanges_page, search_page
from gateway.server.console.sessions import SessionStore
from gateway.server.node import Node, NodeStartError
from tests.paths import config_file
from yrd.admin.v1 import admin_pb2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestSessions:
    """Sessions are random, bounded in number, end when idle, and carry a CSRF token."""

    def test_ids_and_csrf_tokens_are_random_and_distinct(self) -> None:
        store = SessionStore(max_sessions=10, idle_seconds=60)
        a = store.create(token="t", operator="a")
        b = store.create(token="t", operator="b")
        assert a.id != b.id
        assert a.csrf != b.csrf
        assert len(a.id) >= 40
        assert len(a.csrf) >= 40
        assert store.get(a.id) is a
        assert store.get(b.id) is b

    def test_unknown_or_missing_id_is_no_session(self) -> None:
        store = SessionStore(max_sessions=2, idle_seconds=60)
        store.create(token="t", operator="a")
        assert store.get("not-a-session") is None
        assert store.get(None) is None
        assert store.get("") is None

    def test_bounded_the_least_recently_used_goes(self) -> None:
        clock = FakeClock()
        store = SessionStore(max_sessions=2, idle_seconds=600, clock=clock)
        first = store.create(token="t", operator="first")
        clock.now += 1
        second = store.create(token="t", operator="second")
        clock.now += 1
        assert store.get(first.id) is first  # first used again: second is now the oldest
        clock.now += 1
        third = store.create(token="t", operator="third")
        assert len(store) == 2
        assert store.get(second.id) is None
        assert store.get(first.id) is first
        assert store.get(third.id) is third

    def test_idle_session_ends_a_used_one_lives_on(self) -> None:
        clock = FakeClock()
        store = SessionStore(max_sessions=5, idle_seconds=100, clock=clock)
        idle = store.create(token="t", operator="idle")
        busy = store.create(token="t", operator="busy")
        for _ in range(3):
            clock.now += 60
            assert store.get(busy.id) is busy
        assert store.get(idle.id) is None
        assert len(store) == 1

    def test_logout_ends_the_session(self) -> None:
        store = SessionStore(max_sessions=5, idle_seconds=100)
        session = store.create(token="t", operator="a")
        store.end(session.id)
        assert store.get(session.id) is None

    def test_csrf_must_match_exactly(self) -> None:
        session = SessionStore(max_sessions=1, idle_seconds=60).create(token="t", operator="a")
        assert session.csrf_matches(session.csrf)
        assert not session.csrf_matches(None)
        assert not session.csrf_matches("")
        assert not session.csrf_matches(session.csrf[:-1])
        assert not session.csrf_matches(session.csrf + "x")


class TestLanguages:
    """?lang= first, then the cookie, then Accept-Language, then English."""

    @pytest.mark.parametrize(
        ("query", "cookie", "header", "expected"),
        [
            ("zh", None, None, "zh"),
            ("en", "zh", "zh-CN", "en"),
            (None, "zh", "en-GB", "zh"),
            ("fr", None, "zh-CN,zh;q=0.9,en;q=0.8", "zh"),
            (None, None, "en-US,en;q=0.9,zh;q=0.8", "en"),
            (None, None, "fr-FR, zh-TW;q=0.5", "zh"),
            (None, None, "de", "en"),
            (None, None, None, "en"),
            (None, "xx", "zh;q=0", "en"),
        ],
    )
    def test_choice(
        self, query: str | None, cookie: str | None, header: str | None, expected: str
    ) -> None:
        assert choose_language(query, cookie, header) == expected

    def test_quality_decides(self) -> None:
        assert language_from_header("en;q=0.3, zh;q=0.7") == "zh"
        assert language_from_header("en;q=bad, zh;q=0.1") == "zh"

    def test_both_catalogues_have_the_same_keys(self) -> None:
        assert set(CATALOGUE["en"]) == set(CATALOGUE["zh"])

    def test_chinese_labels(self) -> None:
        assert translate("zh", "nav.exchanges") == "交换"
        assert translate("zh", "signed_in", operator="王") == "当前用户：王"
        assert translate("en", "nav.exchanges") == "Exchanges"
        assert translate("xx", "nav.exchanges") == "Exchanges"


class TestCharts:
    """Quantiles and per-minute counts from cumulative samples, as Prometheus would."""

    def test_quantile_interpolates_within_the_bucket(self) -> None:
        buckets = [(0.1, 50.0), (0.2, 100.0), (float("inf"), 100.0)]
        assert quantile(0.5, buckets) == pytest.approx(0.1)
        assert quantile(0.75, buckets) == pytest.approx(0.15)
        assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None

    def test_minutes_from_deltas(self) -> None:
        samples = [
            Sample(0.0, 10.0, ((0.01, 0.0), (0.1, 0.0), (float("inf"), 0.0))),
            Sample(60.0, 40.0, ((0.01, 30.0), (0.1, 30.0), (float("inf"), 30.0))),
            Sample(120.0, 50.0, ((0.01, 30.0), (0.1, 40.0), (float("inf"), 40.0))),
        ]
        chart = minutes(samples)
        assert [m.exchanges for m in chart] == [30.0, 10.0]
        assert chart[0].p50 is not None
        assert chart[0].p50 <= 0.01
        assert chart[1].p50 is not None
        assert 0.01 < chart[1].p50 <= 0.1

    def test_sampler_reads_the_node_metrics_and_is_bounded(self) -> None:
        metrics = NodeMetrics("310000")
        clock = FakeClock()
        sampler = MetricsSampler(metrics, interval=5.0, window=60.0, clock=clock)
        for _ in range(100):
            metrics.exchanges.labels("320000", "fund.DeliverWithdrawal", "out", "OK").inc()
            metrics.exchange_seconds.labels("320000", "fund.DeliverWithdrawal", "out").observe(
                0.003
            )
            clock.now += 5
            sampler.sample()
        assert len(sampler.samples) == 13
        assert read_sample(metrics, clock.now).exchanges == 100
        chart = sampler.minutes()
        assert chart[-1].exchanges == pytest.approx(12)
        assert chart[-1].p99 is not None
        assert 0.0025 < chart[-1].p99 <= 0.005


class TestPages:
    """What the node returns is escaped; no script can be injected through it."""

    def view(self) -> View:
        return View(lang="en", path="/exchanges", query={}, operator="ops", csrf="c")

    def test_values_from_the_node_are_escaped(self) -> None:
        evil = '<script>alert("x")</script>'
        response = admin_pb2.ListExchangesResponse(
            exchanges=[
                admin_pb2.Exchange(reference=evil, peer="320000", state="parked", last_error=evil)
            ]
        )
        page = exchanges_page(
            self.view(), response, "", state="", peer="", older_than="", peer_codes=["320000"]
        )
        assert "<script>" not in page
        assert "&lt;script&gt;" in page
        assert 'name="action" value="retry"' in page

    def test_search_escapes_the_query(self) -> None:
        page = search_page(self.view(), '"><img src=x>', None, "")
        assert "<img" not in page


class TestConsoleConfig:
    """[console] is validated; a node with [console] and no [tls] refuses to start."""

    def test_section_validation(self) -> None:
        assert ConsoleSection(endpoint="127.0.0.1:0").max_sessions >= 1
        with pytest.raises(ValidationError, match="host:port"):
            ConsoleSection(endpoint="https://127.0.0.1:1")
        with pytest.raises(ValidationError):
            ConsoleSection(endpoint="127.0.0.1:1", max_sessions=0)
        with pytest.raises(ValidationError):
            ConsoleSection(endpoint="127.0.0.1:1", session_idle_seconds=1)

    async def test_console_without_tls_refused(self, tmp_path: Path) -> None:
        me = parse_province_file(config_file("310000")).model_copy(
            update={"tls": None, "peers": (), "console": ConsoleSection(endpoint="127.0.0.1:0")}
        )
        node = Node(FederationConfig(me=me), store_dir=tmp_path, listen="127.0.0.1:0")
        with pytest.raises(NodeStartError, match=r"\[console\] needs \[tls\]"):
            await node.start()
        assert not (tmp_path / "messages.db").exists()
