"""The operators' monitoring files (monitoring/): the alert rules pass
``promtool check rules``, every alert fires and stays quiet in its
``promtool test rules`` unit tests, the Grafana dashboard is well formed, and
every metric the rules and the dashboard name is one a running node exports
(checked against a real scrape of its /metrics endpoint), and Debian's
Prometheus, scraping a running node, evaluates every rule without error and
fires an alert."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.core.clock import OffsetClock
from gateway.testing.localfed import LocalFederation, free_port
from tests.paths import CONFIG_DIR, REPOSITORY, heading_anchors

MONITORING = REPOSITORY / "monitoring"
ALERTS = MONITORING / "alerts.yml"
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
DASHBOARD = MONITORING / "grafana-dashboard.json"
RUNBOOK = REPOSITORY / "docs" / "runbook.md"
SEVERITIES = {"page", "ticket"}
#: The job name the rules and the dashboard expect nodes to be scraped under.
JOB = "yrd-gateway"


def promtool() -> str:
    """Debian's promtool; its absence fails the test (a skipped rule test would
    let a broken alert through)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: run `sh scripts/ensure_test_tools.sh` (as root it installs "
            "Debian's `prometheus` package, which provides promtool)"
        )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def rule_tests() -> list[dict[str, Any]]:
    cases = []
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            cases.extend(test.get("alert_rule_test", []))
    return cases


# ---- metric names in PromQL -------------------------------------------------

#: PromQL words that look like identifiers but name no metric.
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan",
}  # fmt: skip
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values``
    query) selects; functions, keywords, label names, Grafana variables and
    Prometheus' own ``up`` left out."""
    found = set(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", expr))
    text = re.sub(r"label_values\([^)]*\)", " ", expr)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges: [5m], [$__rate_interval]
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call is None and name.lower() not in KEYWORDS and name != "up":
            found.add(name)
    return found


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = []
    for panel in dashboard["panels"]:
        queries.extend(target["expr"] for target in panel.get("targets", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query or ""))
    return queries


def exported_names(scrape: str) -> set[str]:
    """Metric names a scrape declares (``# HELP``/``# TYPE``, present even for a
    labelled metric with no sample yet) or has samples of."""
    names = set(re.findall(r"^# (?:HELP|TYPE) ([A-Za-z_:][\w:]*)", scrape, re.MULTILINE))
    names |= set(re.findall(r"^([A-Za-z_:][\w:]*)[{ ]", scrape, re.MULTILINE))
    return names


def unknown_names(named: set[str], exported: set[str]) -> set[str]:
    unknown = set()
    for name in named:
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        if name not in exported and base not in exported:
            unknown.add(name)
    return unknown


# ---- the tests --------------------------------------------------------------


class TestAlertRules:
    """monitoring/alerts.yml: valid, unit-tested alert by alert, documented."""

    def test_promtool_accepts_the_rules(self) -> None:
        result = run_promtool("check", "rules", str(ALERTS))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout

    def test_every_promtool_unit_test_passes(self) -> None:
        assert RULE_TESTS, "no promtool tests in monitoring/tests/"
        result = run_promtool("test", "rules", *map(str, RULE_TESTS))
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout

    def test_every_alert_has_a_firing_and_a_quiet_test(self) -> None:
        cases = rule_tests()
        fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
        quiet = {c["alertname"] for c in cases if c.get("exp_alerts") == []}
        names = [rule["alert"] for rule in alert_rules()]
        assert len(names) == len(set(names)), "alert names repeat"
        assert not set(names) - fired, f"alerts never shown to fire: {set(names) - fired}"
        assert not set(names) - quiet, f"alerts never shown quiet: {set(names) - quiet}"
        assert not (fired | quiet) - set(names), "tests name alerts that do not exist"

    def test_firing_tests_check_severity_and_annotations(self) -> None:
        for case in rule_tests():
            for alert in case.get("exp_alerts") or []:
                assert alert["exp_labels"]["severity"] in SEVERITIES, case["alertname"]
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}

    def test_every_alert_has_severity_annotations_and_a_runbook_section(self) -> None:
        anchors = heading_anchors(RUNBOOK)
        for rule in alert_rules():
            name = rule["alert"]
            assert re.fullmatch(r"Yrd[A-Z][A-Za-z0-9]+", name), name
            assert rule["labels"]["severity"] in SEVERITIES, name
            notes = rule["annotations"]
            assert notes["summary"], name
            assert notes["description"], name
            assert notes["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
            assert name.lower() in anchors, f"docs/runbook.md has no section {name}"


class TestDashboard:
    """monitoring/grafana-dashboard.json: importable, every panel titled and queried."""

    def test_valid_json_with_a_datasource_input_and_queried_titled_panels(self) -> None:
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        assert dashboard["schemaVersion"] >= 36
        assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert len(panels) >= 12
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), "panel ids repeat"
        for panel in panels:
            assert panel.get("title"), panel
            assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"].strip(), panel["title"]
                assert target["refId"], panel["title"]
                assert metric_names(target["expr"]) or "up{" in target["expr"], panel["title"]

    def test_metric_names_are_read_from_promql(self) -> None:
        """The name reader used against the scrape below: it finds metrics, and
        not functions, keywords, labels, strings or variables."""
        expr = (
            "histogram_quantile(0.99, sum by (le, method) (rate(yrd_rpc_duration_seconds_bucket"
            '{instance=~"$instance",code="yrd_not_a_metric"}[$__rate_interval]))) > 1 and on (job) '
            "time() - yrd_message_log_verified_timestamp_seconds > 7200 or up == 0"
        )
        assert metric_names(expr) == {
            "yrd_rpc_duration_seconds_bucket",
            "yrd_message_log_verified_timestamp_seconds",
        }
        assert metric_names("label_values(yrd_store_writable, instance)") == {"yrd_store_writable"}
        assert unknown_names(
            {"yrd_rpc_duration_seconds_bucket", "yrd_typo"}, {"yrd_rpc_duration_seconds"}
        ) == {"yrd_typo"}


async def scrape_node(federation: LocalFederation, code: str) -> str:
    server = federation.node(code).metrics_server
    assert server is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


@contextlib.asynccontextmanager
async def prometheus_server(work: Path, target: str) -> AsyncIterator[str]:
    """Debian's Prometheus scraping ``target`` every second under job
    ``yrd-gateway`` with monitoring/alerts.yml loaded; yields its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `sh scripts/ensure_test_tools.sh`")
    config = work / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(ALERTS)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
            }
        ),
        encoding="utf-8",
    )
    address = f"127.0.0.1:{free_port()}"
    with (work / "prometheus.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
            stdout=log,
            stderr=log,
        )
    try:
        yield f"http://{address}"
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def api(http: aiohttp.ClientSession, url: str) -> Any:
    """``data`` of a Prometheus HTTP API answer, None while it cannot answer."""
    try:
        async with http.get(url) as response:
            if response.status != 200:
                return None
            return (await response.json())["data"]
    except aiohttp.ClientConnectionError:
        return None


class TestNamesAgainstAScrape:
    """Every metric the rules and the dashboard name is exported by a real node."""

    async def test_every_metric_named_is_in_a_nodes_scrape(self, tmp_path: Path) -> None:
        async with LocalFederation(CONFIG_DIR, tmp_path) as federation:
            scrape = await scrape_node(federation, "310000")
        exported = exported_names(scrape)
        assert "yrd_store_writable" in exported  # the scrape is a node's
        named: dict[str, set[str]] = {}
        for rule in alert_rules():
            named[f"alerts.yml {rule['alert']}"] = metric_names(rule["expr"])
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        for query in dashboard_queries(dashboard):
            named[f"dashboard {query}"] = metric_names(query)
        everything = set().union(*named.values())
        assert len(everything) >= 15, sorted(everything)
        unknown = {where: unknown_names(names, exported) for where, names in named.items()}
        bad = {where: sorted(names) for where, names in unknown.items() if names}
        assert not bad, f"metrics a node does not export: {bad}"


class TestARealPrometheus:
    """Debian's Prometheus scrapes a running node with the rules loaded: every
    rule evaluates without error on the node's real series, and an alert fires."""

    async def test_rules_evaluate_on_a_nodes_series_and_key_expiry_fires(
        self, tmp_path: Path
    ) -> None:
        clock = OffsetClock(timedelta(0))
        async with LocalFederation(CONFIG_DIR, tmp_path / "fed", clock=clock) as federation:
            days = [
                float(v)
                for v in re.findall(
                    r"^yrd_key_expiry_days\{[^}]*\} (\S+)$",
                    await scrape_node(federation, "310000"),
                    re.MULTILINE,
                )
            ]
            assert days, "the node exports no key expiry"
            # The node's clock moves on to 12 days before its first key expires.
            clock.offset = timedelta(days=min(days) - 12)
            server = federation.node("310000").metrics_server
            assert server is not None
            target = f"127.0.0.1:{server.port}"
            (tmp_path / "prom").mkdir()
            async with (
                prometheus_server(tmp_path / "prom", target) as base,
                aiohttp.ClientSession() as http,
            ):
                deadline = time.monotonic() + 25
                firing: list[dict[str, Any]] = []
                groups: list[dict[str, Any]] = []
                while time.monotonic() < deadline:
                    rules = await api(http, f"{base}/api/v1/rules")
                    alerts = await api(http, f"{base}/api/v1/alerts")
                    groups = rules["groups"] if rules else []
                    evaluated = [
                        r
                        for g in groups
                        for r in g["rules"]
                        if not r["lastEvaluation"].startswith("0001")
                    ]
                    firing = [
                        a
                        for a in (alerts or {}).get("alerts", [])
                        if a["labels"]["alertname"] == "YrdKeyExpiringSoon"
                        and a["state"] == "firing"
                    ]
                    if firing and len(evaluated) == len(alert_rules()):
                        break
                    await asyncio.sleep(0.5)
                up = await api(http, f"{base}/api/v1/query?query=up")
        rules_seen = [r for g in groups for r in g["rules"]]
        assert {r["name"] for r in rules_seen} == {r["alert"] for r in alert_rules()}
        for rule in rules_seen:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert [s["value"][1] for s in up["result"]] == ["1"]
        log = (tmp_path / "prom" / "prometheus.log").read_text(errors="replace")[-2000:]
        assert firing, f"YrdKeyExpiringSoon did not fire within 25 s; Prometheus said: {log}"
        assert {a["labels"]["instance"] for a in firing} == {target}
        assert all(a["labels"]["severity"] == "ticket" for a in firing)
        assert any("expires in 12 days" in a["annotations"]["summary"] for a in firing), firing
