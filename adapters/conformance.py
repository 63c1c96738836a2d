"""The conformance kit: is a province's ``[adapter]`` right about its native formats?

``yrd-gateway adapter test CONFIG [CONFIG…]`` runs, for each province config:

1. **golden vectors** — every ``*.json`` vector below ``golden/`` beside the config file
   (or ``--vectors DIR``), read (native → canonical) and, unless the vector
   is marked ``"direction": "read"``, written back (canonical → native); a
   failing vector names the field that differs (:mod:`adapters.golden`).
   Every mapped message must have at least one vector;
2. **round-trip properties** — for every mapped message, canonical values
   generated from the mapping itself (its code tables, formats, patterns,
   checks, required and optional fields; hypothesis, a fixed number of
   examples, derandomised so a run is repeatable) must survive canonical →
   native → canonical unchanged;
3. **plug-in** — a configured ``[adapter.plugin]`` loads and accepts its settings.

It prints one row per check — message, vector, direction, result — and the
details of each failure, and exits 0 only when every check passed. Vectors
catch a mapping that is consistently wrong in both directions (two codes
swapped); round trips catch a mapping that loses information (a format that
drops a field, a code table that is not one-to-one in practice).
"""

from __future__ import annotations

import base64
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stdnum.cn import uscc

from adapters.canonical import CanonicalField, Kind
from adapters.errors import PluginError
from adapters.golden import check_vector, load_vectors
from adapters.mapping import Translator
from adapters.plugins import resolve
from adapters.spec import AdapterConfig, FieldRule
from gateway.core.identifiers import REGION_CODE_PATTERN, make_id_number

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

#: Round-trip examples per message, unless told otherwise.
DEFAULT_EXAMPLES = 50

PASS, FAIL = "pass", "FAIL"


@dataclass(frozen=True)
class CheckResult:
    """One row of the report."""

    message: str
    vector: str
    direction: str
    passed: bool
    details: tuple[str, ...] = ()


@dataclass
class ProvinceReport:
    """Every check of one province config."""

    config: Path
    code: str
    vectors: Path
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def render(self) -> str:
        rows = [("message", "vector", "direction", "result")]
        rows += [
            (r.message, r.vector, r.direction, PASS if r.passed else FAIL) for r in self.results
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [f"{self.config} (province {self.code}, vectors {self.vectors})"]
        for index, row in enumerate(rows):
            lines.append(
                "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
            )
            if index == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        failed = [r for r in self.results if not r.passed]
        for result in failed:
            lines.append(f"  {FAIL} {result.message} / {result.vector} ({result.direction}):")
            lines.extend(f"      {detail}" for detail in result.details)
        passed = len(self.results) - len(failed)
        lines.append(f"  {passed} passed, {len(failed)} failed")
        return "\n".join(lines)


def check_province(
    adapter: AdapterConfig,
    *,
    config: Path,
    code: str,
    vectors: Path,
    examples: int = DEFAULT_EXAMPLES,
) -> ProvinceReport:
    """Run every conformance check of one province's adapter (``examples=0``:
    the golden vectors and the plugin only, no generated round trips)."""
    report = ProvinceReport(config, code, vectors)
    translator = Translator(adapter)
    report.results.extend(_vector_results(translator, vectors))
    for message in translator.messages if examples > 0 else ():
        report.results.append(round_trip(translator, message, examples))
    if adapter.plugin is not None:
        try:
            resolve(adapter.plugin)
            problems: tuple[str, ...] = ()
        except PluginError as exc:
            problems = tuple(str(exc).split("; "))
        report.results.append(
            CheckResult("plugin", adapter.plugin.name, "load", not problems, problems)
        )
    return report


def _vector_results(translator: Translator, directory: Path) -> Iterable[CheckResult]:
    if not directory.is_dir():
        yield CheckResult(
            "(all)", str(directory), "-", False, ("no golden vectors: the folder does not exist",)
        )
        return
    try:
        vectors = load_vectors(directory)
    except (ValueError, OSError) as exc:
        yield CheckResult("(all)", str(directory), "-", False, (str(exc),))
        return
    covered = set()
    for vector in vectors:
        name = str(vector.path.relative_to(directory))
        if vector.message not in translator.messages:
            yield CheckResult(
                vector.message,
                name,
                vector.direction,
                False,
                (f"the config maps no such message; it maps {sorted(translator.messages)}",),
            )
            continue
        covered.add(vector.message)
        problems = check_vector(translator, vector)
        direction = "read+write" if vector.direction == "both" else "read"
        yield CheckResult(vector.message, name, direction, not problems, tuple(problems))
    for message in translator.messages:
        if message not in covered:
            yield CheckResult(
                message,
                "(none)",
                "-",
                False,
                (f"no golden vector for {message}: add one under {directory}",),
            )


# ---- Round trips -----------------------------------------------------------------------


def round_trip(translator: Translator, message: str, examples: int) -> CheckResult:
    """canonical → native → canonical is the identity on ``examples`` generated values."""
    label = f"{examples} generated"
    try:
        from hypothesis import HealthCheck, Phase, given, settings
    except ImportError:  # pragma: no cover - make installs the adapter-kit extra
        return CheckResult(
            message,
            label,
            "round trip",
            False,
            ("round trips need hypothesis: pip install 'yrd-gateway[adapter-kit]'",),
        )
    strategy = canonical_values(translator, message)

    @settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def holds(value: dict[str, Any]) -> None:
        body = translator.encode(message, value)
        back = translator.decode(message, body)
        differences = _differences(value, back)
        if differences:
            raise AssertionError("; ".join(differences))

    try:
        holds()
    except Exception as exc:  # every failure is a result row; hypothesis may group them
        return CheckResult(message, label, "round trip", False, tuple(_failures(exc)))
    return CheckResult(message, label, "round trip", True)


def _failures(exc: BaseException) -> list[str]:
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in _failures(inner)]
    notes = [n for n in getattr(exc, "__notes__", []) if n.startswith("Falsifying")]
    return [f"{type(exc).__name__}: {exc}", *(" ".join(n.split()) for n in notes)]


def _differences(written: dict[str, Any], read: dict[str, Any], prefix: str = "") -> list[str]:
    problems = []
    for key in sorted(set(written) | set(read)):
        a, b = written.get(key), read.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            problems.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            # Generated values are synthetic, so showing them is safe and helps.
            problems.append(f"{prefix}{key}: wrote {a!r}, read back {b!r}")
    return problems


def canonical_values(translator: Translator, message: str) -> SearchStrategy[dict[str, Any]]:
    """Canonical dicts that ``message``'s mapping can write, drawn from the mapping itself."""
    from hypothesis import strategies as st

    mapper = translator.mapper(message)
    config = translator.config
    required: dict[str, SearchStrategy[Any]] = {}
    optional: dict[str, SearchStrategy[Any]] = {}
    domain = message.split(".", 1)[0]
    for rule in mapper.mapping.fields:
        if rule.canonical is None:
            continue
        target = mapper.schema.fields[rule.canonical]
        if target.kind is Kind.MESSAGE:
            # An empty nested message is "absent" on writing: draw non-empty ones.
            value = canonical_values(translator, f"{domain}.{target.message}").filter(bool)
        else:
            value = _scalar(rule, target, config)
        # A rule with a default reads its default back when absent: always write one.
        if rule.required or rule.default is not None:
            required[rule.canonical] = value
        else:
            optional[rule.canonical] = value
    return st.fixed_dictionaries(required, optional=optional)


_SAFE_TEXT = string.ascii_letters + string.digits + "._:-"


def _scalar(rule: FieldRule, target: CanonicalField, config: AdapterConfig) -> SearchStrategy[Any]:
    from hypothesis import strategies as st

    if rule.codes is not None:
        return st.sampled_from(sorted(config.code_tables[rule.codes].values(), key=str))
    kind = target.kind
    strategies: dict[Kind, Callable[[], SearchStrategy[Any]]] = {
        Kind.STRING: lambda: _string(rule),
        Kind.ENUM: lambda: st.sampled_from(sorted(target.enum_values)),
        Kind.DATE: lambda: st.dates(date(1900, 1, 1), date(2099, 12, 31)).map(date.isoformat),
        Kind.TIMESTAMP: lambda: st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
            lambda t: t.replace(microsecond=0, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ),
        Kind.BOOL: st.booleans,
        Kind.BYTES: lambda: st.binary(min_size=1, max_size=48).map(
            lambda b: base64.b64encode(b).decode("ascii")
        ),
        Kind.INT64: lambda: st.integers(0, 10**12),
        Kind.LIST: lambda: st.lists(_item(rule), min_size=1, max_size=3),
    }
    return strategies[kind]()


def _string(rule: FieldRule) -> SearchStrategy[str]:
    from hypothesis import strategies as st

    if rule.check == "gb11643":
        return st.builds(
            make_id_number,
            st.from_regex(REGION_CODE_PATTERN, fullmatch=True),
            st.dates(date(1900, 1, 1), date.today()),
            st.integers(0, 999),
        )
    if rule.check == "gb32100":
        return st.from_regex(r"[0-9]{2}[1-8][0-9]{5}[0-9A-HJ-NPQRTUWXY]{9}", fullmatch=True).map(
            lambda first17: first17 + uscc.calc_check_digit(first17)
        )
    if rule.pattern is not None:
        return st.from_regex(rule.pattern, fullmatch=True).filter(bool)
    # Text an XML 1.0 document can carry: no control characters, surrogates or
    # non-characters; not blank (an empty value is "absent").
    return st.text(
        st.characters(blacklist_categories=("Cs", "Cc", "Cn")), min_size=1, max_size=24
    ).filter(lambda s: s.strip() == s and bool(s))


def _item(rule: FieldRule) -> SearchStrategy[str]:
    from hypothesis import strategies as st

    if rule.pattern is not None:
        return st.from_regex(rule.pattern, fullmatch=True).filter(bool)
    alphabet = _SAFE_TEXT.replace(rule.separator or "", "") if rule.separator else _SAFE_TEXT
    return st.text(alphabet, min_size=1, max_size=16)
