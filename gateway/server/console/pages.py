"""The console's pages, rendered on the server as HTML.

Every value from the node is escaped (``html.escape``) where it is placed;
nothing is rendered that the AdminService did not return, and it returns no
personal data (no payloads, names or ID numbers). The pages need no script:
forms, links and inline SVG only.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.server.console.charts import Minute, bar_chart, latency_chart
from gateway.server.console.i18n import translate
from yrd.admin.v1 import admin_pb2

#: Actions on an exchange: (form value, catalogue key of its name).
ACTIONS = {
    "retry": "action.retry",
    "park": "action.park",
    "resolve_paid": "action.resolve_paid",
    "resolve_not_paid": "action.resolve_not_paid",
}

#: Keys and certificates with fewer days left than this are marked (in words).
EXPIRY_WARNING_DAYS = 30.0


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


@dataclass
class View:
    """What every page needs: language, the logged-in operator, the CSRF token."""

    lang: str
    path: str
    query: dict[str, str]
    operator: str = ""
    csrf: str = ""
    province: str = ""

    def t(self, key: str, **values: object) -> str:
        return translate(self.lang, key, **values)

    def csrf_field(self) -> str:
        return f'<input type="hidden" name="csrf" value="{e(self.csrf)}">'


def fmt_time(stamp: Timestamp, present: bool = True) -> str:
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp.seconds))


def fmt_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 172_800:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def fmt_ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


def layout(view: View, title: str, body: str, *, notice: str = "", notice_ok: bool = True) -> str:
    """The page around ``body``: navigation, language switch, log-out, notice."""
    nav = ""
    if view.operator:
        links = []
        for href, key in (
            ("/", "nav.overview"),
            ("/exchanges", "nav.exchanges"),
            ("/search", "nav.search"),
            ("/log", "nav.log"),
            ("/diagnostics", "nav.diagnostics"),
        ):
            current = ' aria-current="page"' if view.path == href else ""
            links.append(f'<li><a href="{href}"{current}>{e(view.t(key))}</a></li>')
        nav = (
            f'<nav aria-label="{e(view.t("nav"))}"><ul>{"".join(links)}</ul></nav>'
            f'<div class="who"><span>{e(view.t("signed_in", operator=view.operator))}</span>'
            f'<form method="post" action="/logout">{view.csrf_field()}'
            f'<button type="submit">{e(view.t("logout"))}</button></form></div>'
        )
    other = "zh" if view.lang == "en" else "en"
    switch_query = {**view.query, "lang": other}
    switch = (
        f'<a class="lang" href="{e(view.path)}?{e(urlencode(switch_query))}" '
        f'hreflang="{other}" lang="{other}" aria-label="{e(view.t("lang.switch.label"))}">'
        f"{e(view.t('lang.switch'))}</a>"
    )
    note = ""
    if notice:
        role = "status" if notice_ok else "alert"
        css = "notice ok" if notice_ok else "notice bad"
        mark = "✔ " if notice_ok else "✖ "
        note = f'<p class="{css}" role="{role}">{mark}{e(notice)}</p>'
    province = f" · {e(view.province)}" if view.province else ""
    return (
        "<!DOCTYPE html>"
        f'<html lang="{"zh-CN" if view.lang == "zh" else "en"}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} — {e(view.t('app'))}</title>"
        '<link rel="stylesheet" href="/static/console.css"></head><body>'
        f'<a class="skip" href="#main">{e(view.t("skip"))}</a>'
        f'<header><p class="app">{e(view.t("app"))}{province}</p>{nav}{switch}</header>'
        f'<main id="main" tabindex="-1"><h1>{e(title)}</h1>{note}{body}</main>'
        "</body></html>"
    )


def table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A table with a caption and column headers; cells are HTML already escaped."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f"<p><strong>{e(caption)}</strong>: {e(empty)}</p>"
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    return (
        f"<table><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def section(heading_id: str, heading: str, inner: str) -> str:
    """A section labelled by its own h2 heading."""
    return (
        f'<section aria-labelledby="{heading_id}"><h2 id="{heading_id}">{e(heading)}</h2>'
        f"{inner}</section>"
    )


def login_page(view: View, login_csrf: str, error: str = "") -> str:
    body = (
        f"<p>{e(view.t('login.intro'))}</p>"
        f'<form method="post" action="/login" class="stack">'
        f'<input type="hidden" name="csrf" value="{e(login_csrf)}">'
        f'<label for="token">{e(view.t("login.token"))}</label>'
        f'<input id="token" name="token" type="password" autocomplete="off" required>'
        f'<label for="operator">{e(view.t("login.operator"))}</label>'
        f'<input id="operator" name="operator" type="text" maxlength="64" required>'
        f'<button type="submit">{e(view.t("login.submit"))}</button></form>'
    )
    return layout(view, view.t("login.title"), body, notice=error, notice_ok=not error)


def _yes_no(view: View, value: bool) -> str:
    return e(view.t("yes") if value else view.t("no"))


def _expiry_cell(view: View, days: float) -> str:
    text = f"{days:.1f}"
    if days < 0:
        return f'<span class="bad">{e(text)} ({e(view.t("expired"))})</span>'
    if days < EXPIRY_WARNING_DAYS:
        return f'<span class="warn">{e(text)} ({e(view.t("expiring"))})</span>'
    return e(text)


def _key_rows(view: View, keys: Iterable[admin_pb2.KeyExpiry]) -> list[list[str]]:
    return [
        [
            e(k.province),
            e(k.kind),
            e(k.key_id),
            e(fmt_time(k.not_after, k.HasField("not_after"))),
            _expiry_cell(view, k.days_left),
        ]
        for k in keys
    ]


def overview_page(
    view: View,
    info: admin_pb2.NodeInfo,
    peers: admin_pb2.ListPeersResponse | None,
    peers_error: str,
    chart: Sequence[Minute],
) -> str:
    health = view.t("node.degraded") if info.degraded else view.t("node.healthy")
    mark = "⚠ " if info.degraded else "✔ "
    reasons = "".join(f"<li>{e(reason)}</li>" for reason in info.degraded_reasons)
    node = (
        f'<section aria-labelledby="node-h"><h2 id="node-h">{e(view.t("node"))}</h2><dl>'
        f"<dt>{e(view.t('node.province'))}</dt><dd>{e(info.province)} {e(info.name)}</dd>"
        f"<dt>{e(view.t('node.health'))}</dt><dd>{mark}{e(health)}"
        f"{f'<ul>{reasons}</ul>' if reasons else ''}</dd>"
        f"<dt>{e(view.t('node.version'))}</dt><dd>{e(info.version)}</dd>"
        f"<dt>{e(view.t('node.signing_key'))}</dt><dd>{e(info.signing_key_id)}</dd>"
        f"<dt>{e(view.t('node.log_rows'))}</dt><dd>{info.message_log_rows}</dd>"
        f"<dt>{e(view.t('node.started'))}</dt>"
        f"<dd>{e(fmt_time(info.started_at, info.HasField('started_at')))}</dd></dl></section>"
    )
    if peers is None:
        peer_section = (
            f'<section aria-labelledby="peers-h"><h2 id="peers-h">{e(view.t("peers"))}</h2>'
            f'<p class="notice bad" role="alert">✖ {e(view.t("refused", reason=peers_error))}</p>'
            "</section>"
        )
        keys_section = ""
    else:
        rows = [
            [
                f"{e(p.province)} {e(p.name)}",
                ("✔ " if p.reachable else "✖ ") + _yes_no(view, p.reachable),
                e(p.breaker_state),
                e(fmt_time(p.last_success, p.HasField("last_success"))),
                e(p.last_error or "—"),
                e(p.descriptor_state),
                str(p.pending),
                str(p.parked),
            ]
            for p in peers.peers
        ]
        peer_section = (
            f'<section aria-labelledby="peers-h"><h2 id="peers-h">{e(view.t("peers"))}</h2>'
            + table(
                view.t("peers.caption"),
                [
                    view.t("peer"),
                    view.t("reachable"),
                    view.t("breaker"),
                    view.t("last_success"),
                    view.t("last_error"),
                    view.t("descriptor"),
                    view.t("pending"),
                    view.t("parked"),
                ],
                rows,
                view.t("none"),
            )
            + "</section>"
        )
        key_headers = [
            view.t("node.province"),
            view.t("kind"),
            view.t("key_id"),
            view.t("not_after"),
            view.t("days_left"),
        ]
        peer_keys = [k for p in peers.peers for k in p.keys]
        keys_section = (
            f'<section aria-labelledby="keys-h"><h2 id="keys-h">{e(view.t("keys"))}</h2>'
            + table(
                view.t("keys.own.caption"),
                key_headers,
                _key_rows(view, peers.own_keys),
                view.t("none"),
            )
            + table(
                view.t("keys.peer.caption"), key_headers, _key_rows(view, peer_keys), view.t("none")
            )
            + "</section>"
        )
    return layout(
        view,
        view.t("overview.title"),
        node + peer_section + charts_section(view, chart) + keys_section,
    )


def charts_section(view: View, chart: Sequence[Minute]) -> str:
    if not chart:
        inner = f"<p>{e(view.t('chart.empty'))}</p>"
    else:
        last = chart[-1]
        summary = view.t(
            "chart.summary",
            count=f"{last.exchanges:g}",
            p50=fmt_ms(last.p50),
            p99=fmt_ms(last.p99),
        )
        inner = (
            f"<figure>{bar_chart(view.t('chart.exchanges'), chart)}"
            f"<figcaption>{e(view.t('chart.exchanges'))}</figcaption></figure>"
            f"<figure>{latency_chart(view.t('chart.latency'), chart)}"
            f"<figcaption>{e(view.t('chart.latency'))}</figcaption></figure>"
            f"<p>{e(summary)}</p>"
        )
    return section("charts-h", view.t("charts"), inner)


def _select(
    view: View, name: str, label: str, options: Sequence[tuple[str, str]], chosen: str
) -> str:
    items = "".join(
        f'<option value="{e(value)}"{" selected" if value == chosen else ""}>{e(text)}</option>'
        for value, text in options
    )
    return (
        f'<label for="f-{name}">{e(label)}</label>'
        f'<select id="f-{name}" name="{name}">{items}</select>'
    )


def _action_buttons(view: View, exchange: admin_pb2.Exchange) -> str:
    if exchange.state == "parked":
        actions = ["retry"]
    elif exchange.state == "pending":
        actions = ["park"]
    elif exchange.state == "reconciliation":
        actions = ["resolve_paid", "resolve_not_paid"]
    else:
        actions = []
    reference = exchange.reference or exchange.message_id
    forms = []
    for action in actions:
        name = view.t(ACTIONS[action])
        forms.append(
            '<form method="get" action="/exchanges/confirm" class="inline">'
            f'<input type="hidden" name="action" value="{e(action)}">'
            f'<input type="hidden" name="reference" value="{e(reference)}">'
            f'<button type="submit" aria-label="{e(name)} {e(reference)}">{e(name)}</button></form>'
        )
    return "".join(forms)


def exchange_rows(
    view: View, exchanges: Iterable[admin_pb2.Exchange], now: float, *, actions: bool
) -> list[list[str]]:
    rows = []
    for x in exchanges:
        created = x.created_at.seconds if x.HasField("created_at") else now
        search = f"/search?{urlencode({'correlation_id': x.correlation_id})}"
        reference = e(x.reference or x.message_id)
        if x.correlation_id:
            reference = f'<a href="{e(search)}">{reference}</a>'
        row = [
            reference,
            e(x.peer),
            e(x.service),
            e(
                view.t(f"state.{x.state}")
                if x.state in ("pending", "parked", "reconciliation")
                else x.state
            ),
            str(x.attempts),
            e(fmt_age(now - created)),
            e(fmt_time(x.next_attempt_at, x.HasField("next_attempt_at"))),
            e(x.last_error or "—"),
            e(x.case_status or "—"),
        ]
        if actions:
            row.append(_action_buttons(view, x))
        rows.append(row)
    return rows


EXCHANGE_HEADERS = (
    "reference",
    "peer",
    "service",
    "state",
    "attempts",
    "age",
    "next_attempt",
    "last_error",
    "case_status",
)


def exchanges_page(
    view: View,
    response: admin_pb2.ListExchangesResponse | None,
    error: str,
    *,
    state: str,
    peer: str,
    older_than: str,
    peer_codes: Sequence[str],
    notice: str = "",
    notice_ok: bool = True,
) -> str:
    states = [("", view.t("all"))] + [
        (s, view.t(f"state.{s}")) for s in ("pending", "parked", "reconciliation")
    ]
    peers = [("", view.t("all"))] + [(code, code) for code in peer_codes]
    form = (
        '<form method="get" action="/exchanges" class="filters" '
        f'aria-label="{e(view.t("filter"))}">'
        + _select(view, "state", view.t("filter.state"), states, state)
        + _select(view, "peer", view.t("filter.peer"), peers, peer)
        + f'<label for="f-older">{e(view.t("filter.age"))}</label>'
        '<input id="f-older" name="older_than" type="number" min="0" step="1" '
        f'value="{e(older_than)}">'
        f'<button type="submit">{e(view.t("filter.apply"))}</button></form>'
    )
    if response is None:
        listing = f'<p class="notice bad" role="alert">✖ {e(view.t("refused", reason=error))}</p>'
    else:
        headers = [view.t(h) for h in EXCHANGE_HEADERS] + [view.t("actions")]
        listing = table(
            view.t("exchanges.caption"),
            headers,
            exchange_rows(view, response.exchanges, time.time(), actions=True),
            view.t("none"),
        )
        if response.truncated:
            listing += f"<p>{e(view.t('truncated'))}</p>"
    return layout(
        view, view.t("exchanges.title"), form + listing, notice=notice, notice_ok=notice_ok
    )


def confirm_page(view: View, action: str, reference: str) -> str:
    name = view.t(ACTIONS[action])
    body = (
        f"<p>{e(view.t('confirm.text', action=name, reference=reference))}</p>"
        '<form method="post" action="/exchanges/act" class="stack">'
        f"{view.csrf_field()}"
        f'<input type="hidden" name="action" value="{e(action)}">'
        f'<input type="hidden" name="reference" value="{e(reference)}">'
        f'<label for="reason">{e(view.t("confirm.reason"))}</label>'
        '<input id="reason" name="reason" type="text" maxlength="256">'
        '<div><button type="submit" id="confirm">'
        f"{e(view.t('confirm.submit', action=name))}</button> "
        f'<a href="/exchanges">{e(view.t("confirm.cancel"))}</a></div></form>'
    )
    return layout(view, view.t("confirm.title", action=name), body)


def search_page(
    view: View, correlation_id: str, response: admin_pb2.SearchLogResponse | None, error: str
) -> str:
    form = (
        '<form method="get" action="/search" class="filters">'
        f'<label for="cid">{e(view.t("search.field"))}</label>'
        '<input id="cid" name="correlation_id" type="text" maxlength="128" '
        f'value="{e(correlation_id)}" required>'
        f'<button type="submit">{e(view.t("search.submit"))}</button></form>'
    )
    result = ""
    if error:
        result = f'<p class="notice bad" role="alert">✖ {e(view.t("refused", reason=error))}</p>'
    elif response is not None:
        entries = [
            [
                str(row.seq),
                e(fmt_time(row.logged_at, row.HasField("logged_at"))),
                e(row.direction),
                e(row.kind),
                e(row.peer or "—"),
                e(row.service),
                e(row.summary),
            ]
            for row in response.entries
        ]
        cases = [
            [
                e(c.reference),
                e(c.domain),
                e(c.side),
                e(c.peer),
                e(c.status),
                e(fmt_time(c.updated_at, c.HasField("updated_at"))),
            ]
            for c in response.cases
        ]
        result = (
            f'<section aria-labelledby="cases-h"><h2 id="cases-h">{e(view.t("search.cases"))}</h2>'
            + table(
                view.t("search.cases.caption"),
                [view.t(k) for k in ("reference", "domain", "side", "peer", "status", "updated")],
                cases,
                view.t("none"),
            )
            + "</section>"
            f'<section aria-labelledby="rows-h"><h2 id="rows-h">{e(view.t("search.entries"))}</h2>'
            + table(
                view.t("search.entries.caption"),
                [
                    view.t(k)
                    for k in ("seq", "time", "direction", "kind.row", "peer", "service", "summary")
                ],
                entries,
                view.t("none"),
            )
            + (f"<p>{e(view.t('truncated'))}</p>" if response.truncated else "")
            + "</section>"
            f'<section aria-labelledby="wait-h"><h2 id="wait-h">{e(view.t("search.waiting"))}</h2>'
            + table(
                view.t("search.waiting"),
                [view.t(h) for h in EXCHANGE_HEADERS],
                exchange_rows(view, response.exchanges, time.time(), actions=False),
                view.t("none"),
            )
            + "</section>"
        )
    return layout(view, view.t("search.title"), form + result)


def log_page(view: View, result: admin_pb2.VerifyMessageLogResponse | None, error: str) -> str:
    form = (
        f"<p>{e(view.t('log.intro'))}</p>"
        f'<form method="post" action="/log/verify">{view.csrf_field()}'
        f'<button type="submit">{e(view.t("log.run"))}</button></form>'
    )
    out = ""
    if error:
        out = f'<p class="notice bad" role="alert">✖ {e(view.t("refused", reason=error))}</p>'
    elif result is not None:
        verdict = (
            f'<span class="ok">✔ {e(view.t("log.intact"))}</span>'
            if result.intact
            else f'<span class="bad">✖ {e(view.t("log.broken"))}</span>'
        )
        out = (
            f'<section aria-labelledby="res-h"><h2 id="res-h">{e(view.t("log.result"))}</h2><dl>'
            f'<dt>{e(view.t("log.result"))}</dt><dd id="verdict">{verdict}</dd>'
            f"<dt>{e(view.t('log.rows'))}</dt><dd>{result.rows_checked}</dd>"
            f"<dt>{e(view.t('log.head'))}</dt><dd><code>{e(result.head_hash or '—')}</code></dd>"
            f"<dt>{e(view.t('log.first_bad'))}</dt><dd>{result.first_bad_seq or '—'}</dd>"
            f"<dt>{e(view.t('log.detail'))}</dt><dd>{e(result.detail)}</dd></dl></section>"
        )
    return layout(view, view.t("log.title"), form + out)


def diagnostics_page(view: View, result: admin_pb2.Diagnostics | None, error: str) -> str:
    if error:
        body = f'<p class="notice bad" role="alert">✖ {e(view.t("refused", reason=error))}</p>'
    else:
        assert result is not None

        def verdict(ok: bool) -> str:
            return (
                f'<p class="ok">✔ {e(view.t("ok"))}</p>'
                if ok
                else f'<p class="bad">✖ {e(view.t("problems"))}</p>'
            )

        problems = "".join(f"<li>{e(line)}</li>" for line in result.config_problems)
        listed = f"<ul>{problems}</ul>" if problems else ""
        body = section(
            "cfg-h", view.t("diagnostics.config"), verdict(result.config_ok) + listed
        ) + section(
            "ad-h",
            view.t("diagnostics.adapter"),
            f"{verdict(result.adapter_ok)}<pre>{e(result.adapter_report)}</pre>",
        )
    return layout(view, view.t("diagnostics.title"), body)


def error_page(view: View, message: str) -> str:
    return layout(
        view, view.t("error.title"), f'<p class="notice bad" role="alert">✖ {e(message)}</p>'
    )


STYLESHEET = """
:root { font-family: system-ui, "Noto Sans CJK SC", sans-serif; color: #1a202c; background: #fff; }
body { margin: 0; }
header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; padding: .5rem 1rem;
  background: #edf2f7; border-bottom: 1px solid #a0aec0; }
header .app { font-weight: bold; margin: 0; }
nav ul { display: flex; gap: 1rem; list-style: none; margin: 0; padding: 0; }
nav a[aria-current="page"] { font-weight: bold; text-decoration: underline; }
.who { display: flex; gap: .5rem; align-items: center; margin-left: auto; }
main { padding: 1rem; max-width: 80rem; }
a { color: #1c4f8a; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
caption { text-align: left; font-weight: bold; padding: .25rem 0; }
th, td { border: 1px solid #a0aec0; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #edf2f7; }
.notice { padding: .5rem; border: 2px solid; }
.ok { color: #22543d; }
.bad { color: #9b2c2c; font-weight: bold; }
.warn { color: #7b341e; font-weight: bold; }
.notice.ok { border-color: #22543d; } .notice.bad { border-color: #9b2c2c; }
form.inline { display: inline; }
form.stack { display: flex; flex-direction: column; gap: .4rem; max-width: 28rem; }
form.filters { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center;
  margin-bottom: 1rem; }
button { padding: .25rem .75rem; }
:focus-visible { outline: 3px solid #d69e2e; outline-offset: 2px; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; padding: .5rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .25rem 1rem; }
dt { font-weight: bold; } dd { margin: 0; }
pre { background: #f7fafc; padding: .5rem; overflow-x: auto; }
figure { margin: 0 0 1rem; }
"""
