"""The fund domain's mappings: money formats, lists, config validation and round trips."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters import TranslationError, Translator
from adapters.canonical import DOMAINS
from adapters.formats import FORMATS, FormatContext, Mismatch
from adapters.mapping import from_message, to_message
from adapters.spec import AdapterConfig
from gateway.core.identifiers import REGION_CODE_PATTERN, make_id_number
from tests.adapters.native_documents import documents
from yrd.fund.v1 import fund_pb2

Table = Callable[[str], dict[str, Any]]

_XML = FormatContext(timezone=UTC, textual=True)
_JSON = FormatContext(timezone=UTC, textual=False)
_YUAN = FORMATS[DOMAINS["fund"]["account"].fields["balance_fen"].kind]["yuan"]
_FEN = FORMATS[DOMAINS["fund"]["account"].fields["balance_fen"].kind]["fen"]

_REASONS = [v.name for v in fund_pb2.WithdrawalReason.DESCRIPTOR.values if v.number != 0]
_CENTRE_STATES = ["UNDER_REVIEW", "APPROVED", "PAID", "REJECTED"]
_ACCOUNT_STATES = ["NORMAL", "FROZEN", "CLOSED"]
_HAN = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5)
_TEXT = st.characters(blacklist_categories=("Cs", "Cc", "Cn"))
_FEN_AMOUNTS = st.integers(0, 10**15) | st.sampled_from([1, 99, 100, 101, 10**12, 2**53 + 1])


@pytest.fixture(scope="module")
def translators(adapter_table: Table) -> dict[str, Translator]:
    return {
        stem: Translator(AdapterConfig.model_validate(adapter_table(stem)))
        for stem in ("shanghai", "jiangsu", "zhejiang", "anhui")
    }


class TestYuanFormat:
    """Yuan decimal strings ⇄ fen, exactly: integer arithmetic on the digits, never a float."""

    @pytest.mark.parametrize(
        ("text", "fen"),
        [
            ("0.01", 1),
            ("0.99", 99),
            ("1.00", 100),
            ("1234.56", 123456),
            ("10000000000.00", 10**12),
            ("0.1", 10),
            ("7", 700),
            ("92233720368547758.07", 2**63 - 1),
        ],
    )
    def test_reads_exactly(self, text: str, fen: int) -> None:
        assert _YUAN.to_canonical(text, _XML) == fen

    @pytest.mark.parametrize(
        ("fen", "text"),
        [(1, "0.01"), (99, "0.99"), (100, "1.00"), (123456, "1234.56"), (10**12, "10000000000.00")],
    )
    def test_writes_two_decimals(self, fen: int, text: str) -> None:
        assert _YUAN.to_native(fen, _XML) == text
        assert _YUAN.to_native(str(fen), _XML) == text  # int64 as MessageToDict writes it

    @settings(max_examples=300)
    @given(fen=_FEN_AMOUNTS)
    @example(fen=1)
    @example(fen=99)
    @example(fen=100)
    @example(fen=10**12)
    def test_round_trip(self, fen: int) -> None:
        assert _YUAN.to_canonical(_YUAN.to_native(fen, _XML), _XML) == fen

    @pytest.mark.parametrize(
        "text",
        [
            "12.345",
            "-1.00",
            "1,234.56",
            "1e3",
            " 1.00",
            "1.",
            ".5",
            "",
            "01.00",
            "NaN",
            "１.00",
            "1１.00",
            "1.٣",
        ],
    )
    def test_refuses(self, text: str) -> None:
        with pytest.raises(Mismatch, match="yuan"):
            _YUAN.to_canonical(text, _XML)

    def test_refuses_a_json_number(self) -> None:
        with pytest.raises(Mismatch, match="a string"):
            _YUAN.to_canonical(1234, _JSON)

    def test_refuses_negative_and_overflow(self) -> None:
        with pytest.raises(Mismatch, match="not negative"):
            _YUAN.to_native(-1, _XML)
        with pytest.raises(Mismatch, match="int64"):
            _YUAN.to_canonical("92233720368547758.08", _XML)


class TestFenFormat:
    """Fen are non-negative integers: JSON numbers, or XML digits; never floats or bools."""

    def test_json(self) -> None:
        assert _FEN.to_canonical(123456, _JSON) == 123456
        assert _FEN.to_native("123456", _JSON) == 123456

    @pytest.mark.parametrize("raw", ["123", True, -5])
    def test_refuses_in_json(self, raw: Any) -> None:
        with pytest.raises(Mismatch):
            _FEN.to_canonical(raw, _JSON)

    def test_xml_digits(self) -> None:
        assert _FEN.to_canonical("42", _XML) == 42
        assert _FEN.to_native(42, _XML) == "42"
        with pytest.raises(Mismatch):
            _FEN.to_canonical("4.2", _XML)


def _shanghai_withdrawal(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "ywlsh": "REF-1",
        "sqr": {"sfzh": "310104198807151230", "xm": "张伟"},
        "gjjzh": "310012345678",
        "tqyy": "03",
        "tqje": 100,
        "skzh": "6222020200112233445",
        "skyh": "工商银行",
    }
    document.update(changes)
    return document


def _anhui_account(balance: str) -> bytes:
    return (
        '<AccountResult code="0"><AccountNo>340011112222</AccountNo>'
        f"<AccountState>01</AccountState><Balance>{balance}</Balance></AccountResult>"
    ).encode()


class TestAmountErrors:
    """A bad amount raises TranslationError naming the native field, not quoting the value."""

    @pytest.mark.parametrize("balance", ["12.345", "-1.00", "abc", "12.3.4"])
    def test_anhui_balance(self, translators: dict[str, Translator], balance: str) -> None:
        with pytest.raises(TranslationError, match=r"^fund\.account: Balance: expected an amount"):
            translators["anhui"].decode("fund.account", _anhui_account(balance))

    @pytest.mark.parametrize("amount", [-100, "100", 1.5, True])
    def test_shanghai_amount(self, translators: dict[str, Translator], amount: Any) -> None:
        with pytest.raises(TranslationError, match=r"^fund\.withdrawal: tqje: expected") as info:
            translators["shanghai"].to_canonical(
                "fund.withdrawal", _shanghai_withdrawal(tqje=amount)
            )
        assert str(amount) not in str(info.value).replace("fund.withdrawal", "")

    def test_negative_canonical_amount(self, translators: dict[str, Translator]) -> None:
        canonical = translators["anhui"].to_canonical(
            "fund.withdrawal", translators["anhui"].parse("fund.withdrawal", _anhui_apply())
        )
        canonical["amount_fen"] = -5
        with pytest.raises(TranslationError, match=r"Amount: expected canonical 'amount_fen'"):
            translators["anhui"].encode("fund.withdrawal", canonical)

    def test_id_number_with_non_ascii_digits(self, translators: dict[str, Translator]) -> None:
        document = _shanghai_withdrawal(sqr={"sfzh": "３10104198807151230", "xm": "张伟"})
        with pytest.raises(TranslationError, match=r"sqr\.sfzh: expected a GB 11643"):
            translators["shanghai"].to_canonical("fund.withdrawal", document)

    def test_unknown_reason_code(self, translators: dict[str, Translator]) -> None:
        with pytest.raises(TranslationError, match=r"tqyy: expected a code of table"):
            translators["shanghai"].to_canonical("fund.withdrawal", _shanghai_withdrawal(tqyy="99"))

    def test_unspecified_reason_cannot_be_written(self, translators: dict[str, Translator]) -> None:
        canonical = translators["shanghai"].to_canonical("fund.withdrawal", _shanghai_withdrawal())
        canonical["reason"] = "WITHDRAWAL_REASON_UNSPECIFIED"
        with pytest.raises(TranslationError, match=r"tqyy: expected canonical 'reason'"):
            translators["shanghai"].encode("fund.withdrawal", canonical)


def _anhui_apply(proofs: str = "<Proofs><ProofNo>C1</ProofNo></Proofs>") -> bytes:
    return (
        "<WithdrawalApply><SerialNo>REF-1</SerialNo>"
        "<Applicant><IdNo>340104198807151236</IdNo><Name>张伟</Name></Applicant>"
        "<AccountNo>340011112222</AccountNo><Reason>13</Reason><Amount>1.00</Amount>"
        "<Payee><AccountNo>6222020200112233445</AccountNo><BankName>工商银行</BankName></Payee>"
        f"{proofs}</WithdrawalApply>"
    ).encode()


class TestLists:
    """Repeated strings: JSON arrays, repeated XML elements, or one joined string."""

    def test_json_array(self, translators: dict[str, Translator]) -> None:
        canonical = translators["shanghai"].to_canonical(
            "fund.withdrawal", _shanghai_withdrawal(zmcl=["A", "B"])
        )
        assert canonical["supporting_certificates"] == ["A", "B"]

    @pytest.mark.parametrize("value", ["A", [1], [""], [None], [["A"]]])
    def test_json_array_refused(self, translators: dict[str, Translator], value: Any) -> None:
        with pytest.raises(TranslationError, match=r"zmcl"):
            translators["shanghai"].to_canonical(
                "fund.withdrawal", _shanghai_withdrawal(zmcl=value)
            )

    def test_empty_list_is_absent(self, translators: dict[str, Translator]) -> None:
        canonical = translators["shanghai"].to_canonical(
            "fund.withdrawal", _shanghai_withdrawal(zmcl=[])
        )
        assert "supporting_certificates" not in canonical
        assert "zmcl" not in translators["shanghai"].to_native("fund.withdrawal", canonical)

    def test_xml_items(self, translators: dict[str, Translator]) -> None:
        body = _anhui_apply("<Proofs><ProofNo>C1</ProofNo><ProofNo>C2</ProofNo></Proofs>")
        canonical = translators["anhui"].decode("fund.withdrawal", body)
        assert canonical["supporting_certificates"] == ["C1", "C2"]
        assert canonical["amount_fen"] == 100

    def test_xml_foreign_item(self, translators: dict[str, Translator]) -> None:
        body = _anhui_apply("<Proofs><ProofNo>C1</ProofNo><Other>C2</Other></Proofs>")
        with pytest.raises(TranslationError, match=r"Proofs\[1\]: expected an <ProofNo>"):
            translators["anhui"].decode("fund.withdrawal", body)

    def test_joined(self, translators: dict[str, Translator]) -> None:
        translator = translators["zhejiang"]
        canonical = {
            "reference": "REF-1",
            "applicant": {"id_number": "330106198807151237", "full_name": "张伟"},
            "fund_account": "330055556666",
            "reason": "RENT",
            "amount_fen": 1,
            "payee_account": "6222020200112233445",
            "payee_bank": "工商银行",
            "supporting_certificates": ["C1", "C2"],
        }
        native = translator.to_native("fund.withdrawal", canonical)
        assert isinstance(native, dict)
        assert native["proof_ids"] == "C1,C2"
        with pytest.raises(TranslationError, match=r"proof_ids: expected .*separator ','"):
            translator.to_native(
                "fund.withdrawal", {**canonical, "supporting_certificates": ["C1,C2"]}
            )
        native["proof_ids"] = "C1,,C2"
        with pytest.raises(TranslationError, match=r"proof_ids: expected item 1"):
            translator.to_canonical("fund.withdrawal", native)


class TestFundConfig:
    """The [adapter.fund] section is optional, and validated with its key paths."""

    def test_optional(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        del table["fund"]
        config = AdapterConfig.model_validate(table)
        assert config.fund is None
        assert not any(m.startswith("fund.") for m in Translator(config).messages)

    def test_every_shipped_province_has_one(self, province: tuple[str, AdapterConfig]) -> None:
        code, config = province
        assert config.fund is not None
        assert config.fund.province == code

    def test_status_query_needed_for_post(self, adapter_table: Table) -> None:
        table = adapter_table("shanghai")
        del table["fund"]["status_query"]
        with pytest.raises(ValidationError, match=r"fund\.status_query\n.*POSTed status query"):
            AdapterConfig.model_validate(table)

    def test_no_status_query_for_get(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        table["fund"]["status_query"] = {"fields": [{"canonical": "reference", "native": "r"}]}
        with pytest.raises(ValidationError, match=r"GET"):
            AdapterConfig.model_validate(table)

    def test_other_placeholder(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        table["fund"]["status_path"] = "/w/{reference}/{case}"
        with pytest.raises(ValidationError, match=r"only placeholder"):
            AdapterConfig.model_validate(table)

    def test_unmapped_required_field(self, adapter_table: Table) -> None:
        table = adapter_table("jiangsu")
        table["fund"]["account"]["fields"] = [
            r for r in table["fund"]["account"]["fields"] if r["canonical"] != "balance_fen"
        ]
        with pytest.raises(
            ValidationError,
            match=r"fund\.account\.fields\n.*required canonical field 'balance_fen'",
        ):
            AdapterConfig.model_validate(table)

    def test_money_format_on_a_string(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        table["fund"]["withdrawal"]["fields"][2]["format"] = "yuan"  # fund_account
        with pytest.raises(
            ValidationError, match=r"withdrawal\.fields\.2\.format\n.*a string field takes none"
        ):
            AdapterConfig.model_validate(table)

    def test_xml_list_needs_item(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        for rule in table["fund"]["withdrawal"]["fields"]:
            if rule["canonical"] == "supporting_certificates":
                del rule["item"]
        with pytest.raises(ValidationError, match=r"a list in XML needs 'item'"):
            AdapterConfig.model_validate(table)

    def test_item_only_on_lists(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        table["fund"]["withdrawal"]["fields"][2]["item"] = "X"
        with pytest.raises(ValidationError, match=r"only list fields take them"):
            AdapterConfig.model_validate(table)

    def test_bad_province(self, adapter_table: Table) -> None:
        table = adapter_table("anhui")
        table["fund"]["province"] = "34"
        with pytest.raises(ValidationError, match=r"fund\.province"):
            AdapterConfig.model_validate(table)


# ---- Property tests ----------------------------------------------------------------

_REFERENCE = st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)
_DIGITS = st.from_regex(r"[0-9]{8,20}", fullmatch=True)
_CERT = st.from_regex(r"[A-Za-z0-9._:-]{1,40}", fullmatch=True)


def _instants() -> st.SearchStrategy[str]:
    return st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
        lambda d: d.replace(microsecond=0, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )


@st.composite
def withdrawals(draw: st.DrawFn) -> dict[str, Any]:
    birth = draw(st.dates(min_value=date(1930, 1, 1), max_value=date(2008, 12, 31)))
    region = draw(st.from_regex(REGION_CODE_PATTERN, fullmatch=True))
    return {
        "reference": draw(_REFERENCE),
        "applicant": {
            "id_number": make_id_number(region, birth, draw(st.integers(0, 999))),
            "full_name": draw(st.text(_HAN, min_size=1, max_size=6)),
        },
        "fund_account": draw(_DIGITS),
        "reason": draw(st.sampled_from(_REASONS)),
        "amount_fen": draw(_FEN_AMOUNTS.filter(lambda n: n > 0)),
        "payee_account": draw(_DIGITS),
        "payee_bank": draw(st.text(_TEXT, min_size=1, max_size=20).filter(str.strip)),
        "supporting_certificates": draw(st.lists(_CERT, max_size=4)),
        "applicant_province": draw(st.sampled_from(["310000", "320000", "330000", "340000"])),
    }


@st.composite
def status_updates(draw: st.DrawFn) -> dict[str, Any]:
    status = draw(st.sampled_from(_CENTRE_STATES))
    update: dict[str, Any] = {
        "reference": draw(_REFERENCE),
        "remote_reference": draw(_REFERENCE),
        "status": status,
        "changed_at": draw(_instants()),
    }
    if status == "REJECTED":
        update["status_reason"] = draw(st.text(_TEXT, min_size=1, max_size=30).filter(str.strip))
    if status == "PAID":
        update["paid_amount_fen"] = draw(_FEN_AMOUNTS)
    return update


def _as_application(canonical: dict[str, Any]) -> fund_pb2.WithdrawalApplication:
    return to_message(
        {k: v for k, v in canonical.items() if k != "reference"}, fund_pb2.WithdrawalApplication
    )


class TestFundRoundTrip:
    """canonical → native bytes → canonical is the identity, for every fund message."""

    @settings(max_examples=150)
    @given(withdrawal=withdrawals())
    def test_withdrawal(
        self, province: tuple[str, AdapterConfig], withdrawal: dict[str, Any]
    ) -> None:
        translator = Translator(province[1])
        back = translator.decode(
            "fund.withdrawal", translator.encode("fund.withdrawal", withdrawal)
        )
        assert isinstance(back["amount_fen"], int)
        assert back["reference"] == withdrawal["reference"]
        assert _as_application(back) == _as_application(withdrawal)

    @settings(max_examples=50)
    @given(withdrawal=withdrawals())
    def test_withdrawal_from_a_proto(
        self, province: tuple[str, AdapterConfig], withdrawal: dict[str, Any]
    ) -> None:
        # What the connector does: MessageToDict writes int64 as a decimal string.
        translator = Translator(province[1])
        canonical = from_message(_as_application(withdrawal))
        canonical["reference"] = withdrawal["reference"]
        back = translator.decode("fund.withdrawal", translator.encode("fund.withdrawal", canonical))
        assert back["amount_fen"] == withdrawal["amount_fen"]

    @settings(max_examples=150)
    @given(
        account=st.fixed_dictionaries(
            {
                "found": st.just(True),
                "fund_account": _DIGITS,
                "status": st.sampled_from(_ACCOUNT_STATES),
                "balance_fen": _FEN_AMOUNTS,
                "as_of": _instants(),
            }
        )
    )
    def test_account(self, province: tuple[str, AdapterConfig], account: dict[str, Any]) -> None:
        translator = Translator(province[1])
        body = translator.encode("fund.account", account)
        assert translator.decode("fund.account", body) == account

    def test_account_not_found(self, province: tuple[str, AdapterConfig]) -> None:
        translator = Translator(province[1])
        body = translator.encode("fund.account", {"found": False})
        assert translator.decode("fund.account", body) == {"found": False}

    @settings(max_examples=150)
    @given(update=status_updates())
    def test_submit_answer(
        self, province: tuple[str, AdapterConfig], update: dict[str, Any]
    ) -> None:
        translator = Translator(province[1])
        body = translator.encode("fund.submit_answer", update)
        assert translator.decode("fund.submit_answer", body) == update

    @settings(max_examples=150)
    @given(update=status_updates())
    def test_status(self, province: tuple[str, AdapterConfig], update: dict[str, Any]) -> None:
        translator = Translator(province[1])
        update = {**update, "found": True}
        body = translator.encode("fund.status", update)
        assert translator.decode("fund.status", body) == update

    @given(id_number_=st.just("310104198807151230"), reference=_REFERENCE)
    def test_queries(
        self, province: tuple[str, AdapterConfig], id_number_: str, reference: str
    ) -> None:
        translator = Translator(province[1])
        query = {"id_number": id_number_}
        assert (
            translator.decode("fund.account_query", translator.encode("fund.account_query", query))
            == query
        )
        if "fund.status_query" in translator.messages:
            status_query = {"reference": reference}
            body = translator.encode("fund.status_query", status_query)
            assert translator.decode("fund.status_query", body) == status_query


class TestFundArbitraryInput:
    """Whatever a fund centre sends, the only failure is a TranslationError."""

    @settings(max_examples=200)
    @given(body=st.binary(max_size=300), message=st.sampled_from(["fund.account", "fund.status"]))
    def test_bytes(self, province: tuple[str, AdapterConfig], body: bytes, message: str) -> None:
        with contextlib.suppress(TranslationError):
            Translator(province[1]).decode(message, body)

    @settings(max_examples=100)
    @given(
        data=st.data(),
        message=st.sampled_from(["fund.account", "fund.status", "fund.withdrawal"]),
    )
    def test_documents(
        self, province: tuple[str, AdapterConfig], data: st.DataObject, message: str
    ) -> None:
        # JSON objects or XML element trees, as the province's format is: every
        # province's reader is exercised (XML included), with its own keys.
        translator = Translator(province[1])
        extra = ["fhdm", "sj", "resultCode", "account", "ret_code", "data", "zmcl"]
        document = data.draw(documents(translator, message, extra))
        with contextlib.suppress(TranslationError):
            translator.to_canonical(message, document)
