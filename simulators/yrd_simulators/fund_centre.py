"""A province's housing provident fund centre, simulated: a real HTTP server on loopback.

It stands for the province's *existing* fund system, so its native endpoints
are written by hand for each province below and deliberately do **not** use
the mapping engine: a wrong ``[adapter.fund]`` mapping fails against this
simulator as it would against the real centre.

Accounts (in memory, deterministic from province and seed): one for each of
the province's own synthetic residents, and one for every third resident of
each other province (people who once worked here, so that a Shanghai
resident has fund to withdraw in Jiangsu). A few accounts are FROZEN or
CLOSED.

Native endpoints (path and documents per province, see the dialects):

- account query by resident ID number → account number, status, balance,
  as-of time; an unknown holder gets the province's "not found" answer;
- withdrawal submission under a gateway-chosen reference → the centre's case
  number and status. Idempotent by reference: a repeated submission answers
  the case's current state and never opens a second case or pays twice. An
  application the centre cannot take (unknown account, amount not positive,
  unknown reason, missing payee) is opened as a case and rejected at once,
  so a retry gets the same answer; a document that cannot be read, or has no
  reference, gets HTTP 400;
- status query by reference → status, reason, paid amount, time of change.

Review (a background task, ``review_delay`` seconds after submission): the
rules in :meth:`FundCentreSimulator._review`. An approved case is paid
``payment_delay`` seconds later: the balance falls by the amount exactly once
per reference (recorded in :attr:`FundCentreSimulator.payments`). REJECTED
and PAID are final.

Harness endpoints (uniform JSON, for tests and demos):

- ``GET /admin/accounts[?id_number=…]`` →
  ``[{"account", "id_number", "balance_fen", "status"}]`` (status NORMAL / FROZEN / CLOSED);
- ``GET /admin/payments`` → ``[{"reference", "account", "amount_fen"}]`` in order;
- ``GET /admin/withdrawals`` → ``[{"reference", "case_no", "status", "reason",
  "amount_fen", "paid_fen"}]``;
- ``POST /admin/accounts/{account}/status`` with ``{"status": "FROZEN"}``;
- ``POST /admin/forget`` → ``{"forgotten_cases": n}``: the centre loses every
  case (as one that lost its state); balances and the payment ledger stay;
- ``POST /admin/faults`` with ``{"lose_answers": true}``: native requests are
  still acted on, but answered HTTP 503 (the answer lost on the way).

Submissions are idempotent by reference and by (applicant's province,
idempotency key): the same application under another reference is the same
case. With a ``state_file`` (``--state-dir`` of
``python -m yrd_simulators``) cases, balances and the payment ledger
are kept in SQLite and survive a restart.
"""

from __future__ import annotations

import asyncio
import random
import re
import xml.etree.ElementTree as ET  # building only; parsing uses defusedxml
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple
from zoneinfo import ZoneInfo

from aiohttp import web

from adapters.errors import TranslationError
from adapters.formats import format_timestamp
from adapters.mapping import Translator
from adapters.spec import AdapterConfig
from gateway.core.clock import Clock, SystemClock
from yrd_simulators import mapped
from yrd_simulators.documents import BadNativeRequest as BadNativeRequest
from yrd_simulators.documents import dumps as _dumps
from yrd_simulators.documents import fen_to_yuan as fen_to_yuan
from yrd_simulators.documents import json_object as _json_object
from yrd_simulators.documents import local as _local
from yrd_simulators.documents import millis as _millis
from yrd_simulators.documents import text as _text
from yrd_simulators.documents import xml as _xml
from yrd_simulators.documents import xml_root as _xml_root
from yrd_simulators.durable import DurableState
from yrd_simulators.residents import COUNTIES, synthetic_residents
from yrd_simulators.server import (
    SimulatorServer,
    admin_set_choice,
    json_error,
    json_object,
    not_an_object,
)

_CST = ZoneInfo("Asia/Shanghai")

ACCOUNT_STATUSES = ("NORMAL", "FROZEN", "CLOSED")
REASONS = (
    "HOUSE_PURCHASE",
    "HOUSE_BUILD_OR_RENOVATION",
    "RENT",
    "LOAN_REPAYMENT",
    "RETIREMENT",
    "LEAVING_REGION",
    "SERIOUS_ILLNESS",
    "LOSS_OF_WORK_CAPACITY",
)
UNDER_REVIEW, APPROVED, PAID, REJECTED = "UNDER_REVIEW", "APPROVED", "PAID", "REJECTED"
_FINAL = frozenset({PAID, REJECTED})

#: Most a RENT withdrawal may take per application (fen): 3,000.00 yuan.
RENT_LIMIT_FEN = 300_000
RETIREMENT_AGE = 60
#: Reasons that need at least one supporting certificate.
_NEEDS_CERTIFICATE = frozenset({"HOUSE_PURCHASE", "HOUSE_BUILD_OR_RENOVATION", "LEAVING_REGION"})

#: Which accounts (1-based, in creation order) are not NORMAL.
_INITIAL_STATUS = {4: "FROZEN", 17: "FROZEN", 45: "FROZEN", 9: "CLOSED", 28: "CLOSED", 60: "CLOSED"}
BALANCE_MIN_FEN = 5_000_000
BALANCE_MAX_FEN = 80_000_000

#: Why a case is rejected: a key per rule, worded by each province's dialect.
_REJECTIONS = {
    "frozen": "account frozen",
    "closed": "account closed",
    "not_owner": "account does not belong to the applicant",
    "exceeds_balance": "amount exceeds balance",
    "certificate": "supporting certificate required",
    "rent_limit": "rent withdrawal exceeds 3000.00 yuan per application",
    "not_retired": "applicant below retirement age",
    "retirement_full": "retirement withdrawal must take the full balance",
    "unknown_account": "no such fund account",
    "amount": "amount must be a positive number of fen",
    "reason": "unknown withdrawal reason",
    "incomplete": "incomplete application",
}


@dataclass
class FundAccount:
    """One account at the centre (canonical values: status an AccountStatus name)."""

    account_no: str
    id_number: str
    balance_fen: int
    status: str
    #: Approved but not yet paid (fen), so that two approvals cannot overdraw.
    reserved_fen: int = 0


@dataclass(frozen=True)
class Submission:
    """A withdrawal as the native submission stated it (canonical values)."""

    reference: str
    id_number: str = ""
    full_name: str = ""
    account_no: str = ""
    #: Canonical WithdrawalReason name; None when the native code is unknown.
    reason: str | None = None
    amount_fen: int = 0
    payee_account: str = ""
    payee_bank: str = ""
    certificates: tuple[str, ...] = ()
    applicant_province: str = ""
    #: The exchange's idempotency key: with the applicant's province, one
    #: application, whatever reference it comes under.
    idempotency_key: str = ""


@dataclass
class Case:
    """A withdrawal case at the centre."""

    case_no: str
    submission: Submission
    status: str
    changed_at: datetime
    #: Rejection key (a key of _REJECTIONS), when REJECTED.
    rejection: str = ""
    paid_fen: int = 0


class Payment(NamedTuple):
    """One payment to a payee: (reference, account, amount_fen)."""

    reference: str
    account: str
    amount_fen: int


# ---- Native helpers ------------------------------------------------------------------


def _fen(document: dict[str, Any], *path: str) -> int:
    node: Any = document
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None:
        return 0
    if not isinstance(node, int) or isinstance(node, bool):
        raise BadNativeRequest(f"{'.'.join(path)} must be an integer number of fen")
    return node


def _string_list(document: dict[str, Any], key: str) -> tuple[str, ...]:
    value = document.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadNativeRequest(f"{key} must be an array of strings")
    return tuple(value)


_YUAN = re.compile(r"([0-9]{1,17})(?:\.([0-9]{1,2}))?")


def yuan_to_fen(text: str) -> int:
    """Anhui's amounts: a yuan decimal string, converted exactly (no float)."""
    match = _YUAN.fullmatch(text)
    if not match:
        raise BadNativeRequest("amounts are yuan with at most two decimals")
    return int(match[1]) * 100 + int((match[2] or "").ljust(2, "0"))


# ---- Dialects: each province's native endpoints --------------------------------------


class _Dialect(ABC):
    """One province's native fund endpoints: paths, documents and code tables."""

    account_path: str
    submit_path: str
    #: With "{reference}" in it, the status query is a GET of that path.
    status_path: str
    content_type: str = "application/json"
    #: Native reason code → canonical WithdrawalReason name.
    reasons: ClassVar[dict[str, str]]
    #: Canonical status name → native code.
    states: ClassVar[dict[str, str]]
    #: Canonical AccountStatus name → native code.
    account_states: ClassVar[dict[str, str]]
    #: Rejection key → the province's wording (English by default).
    wording: ClassVar[dict[str, str]] = _REJECTIONS

    @property
    def status_by_get(self) -> bool:
        return "{reference}" in self.status_path

    def reason(self, code: str) -> str | None:
        return self.reasons.get(code)

    def rejection_text(self, case: Case) -> str:
        return self.wording[case.rejection] if case.status == REJECTED else ""

    @abstractmethod
    def parse_account_query(self, body: bytes) -> str:
        """The holder's ID number; raises BadNativeRequest."""

    @abstractmethod
    def account_answer(self, account: FundAccount | None, now: datetime) -> bytes:
        """The native answer to an account query (None: no account)."""

    @abstractmethod
    def parse_submission(self, body: bytes) -> Submission:
        """The submission; raises BadNativeRequest for an unreadable document."""

    @abstractmethod
    def case_answer(self, case: Case | None) -> bytes:
        """Answer to a submission or a status query (None: no case with that reference)."""

    def parse_status_query(self, body: bytes) -> str:
        """The reference asked about (POSTed status queries)."""
        raise BadNativeRequest("status is queried by GET")  # pragma: no cover

    def submit_answer(self, case: Case) -> bytes:
        """Answer to a submission: the status answer's document unless a dialect differs."""
        return self.case_answer(case)

    @abstractmethod
    def error(self, message: str) -> bytes:
        """The native body of an HTTP 400 answer."""


class _Shanghai(_Dialect):
    """JSON with pinyin-initial keys, yyyyMMddHHmmss times, amounts in fen, fhdm result codes."""

    account_path = "/api/gjj/zhcx"  # 账户查询
    submit_path = "/api/gjj/tqsq"  # 提取申请
    status_path = "/api/gjj/tqcx"  # 提取查询
    reasons: ClassVar[dict[str, str]] = {f"{i:02d}": r for i, r in enumerate(REASONS, 1)}
    states: ClassVar[dict[str, str]] = {
        UNDER_REVIEW: "SHZ",  # 审核中
        APPROVED: "SHTG",  # 审核通过
        PAID: "YZF",  # 已支付
        REJECTED: "BH",  # 驳回
    }
    account_states: ClassVar[dict[str, str]] = {"NORMAL": "ZC", "FROZEN": "DJ", "CLOSED": "XH"}
    wording: ClassVar[dict[str, str]] = {
        "frozen": "账户已冻结",
        "closed": "账户已销户",
        "not_owner": "账户与申请人不符",
        "exceeds_balance": "提取金额超过账户余额",
        "certificate": "缺少证明材料",
        "rent_limit": "租房提取每次不超过3000元",
        "not_retired": "申请人未达退休年龄",
        "retirement_full": "离退休提取须全额提取",
        "unknown_account": "公积金账户不存在",
        "amount": "提取金额必须为正数",
        "reason": "提取原因代码无效",
        "incomplete": "申请信息不完整",
    }

    def parse_account_query(self, body: bytes) -> str:
        return _text(_json_object(body), "sfzh", required=True)

    def account_answer(self, account: FundAccount | None, now: datetime) -> bytes:
        if account is None:
            return _dumps({"fhdm": "04", "fhxx": "未查询到公积金账户"})
        return _dumps(
            {
                "fhdm": "00",
                "fhxx": "成功",
                "sj": {
                    "gjjzh": account.account_no,
                    "zhzt": self.account_states[account.status],
                    "ye": account.balance_fen,
                    "cxsj": _local(now, "%Y%m%d%H%M%S"),
                },
            }
        )

    def parse_submission(self, body: bytes) -> Submission:
        d = _json_object(body)
        return Submission(
            reference=_text(d, "ywlsh", required=True),
            id_number=_text(d, "sqr", "sfzh"),
            full_name=_text(d, "sqr", "xm"),
            account_no=_text(d, "gjjzh"),
            reason=self.reason(_text(d, "tqyy")),
            amount_fen=_fen(d, "tqje"),
            payee_account=_text(d, "skzh"),
            payee_bank=_text(d, "skyh"),
            certificates=_string_list(d, "zmcl"),
            applicant_province=_text(d, "sldq"),
            idempotency_key=_text(d, "qqbs"),
        )

    def parse_status_query(self, body: bytes) -> str:
        return _text(_json_object(body), "ywlsh", required=True)

    def case_answer(self, case: Case | None) -> bytes:
        if case is None:
            return _dumps({"fhdm": "04", "fhxx": "未查询到提取业务"})
        data: dict[str, Any] = {
            "ywlsh": case.submission.reference,
            "ajbh": case.case_no,
            "blzt": self.states[case.status],
            "bgsj": _local(case.changed_at, "%Y%m%d%H%M%S"),
        }
        if case.status == REJECTED:
            data["ztsm"] = self.rejection_text(case)
        if case.status == PAID:
            data["zfje"] = case.paid_fen
        return _dumps({"fhdm": "00", "fhxx": "成功", "sj": data})

    def error(self, message: str) -> bytes:
        return _dumps({"fhdm": "40", "fhxx": message})


class _Jiangsu(_Dialect):
    """JSON with camelCase keys, RFC 3339 UTC times, amounts in fen; status by GET."""

    account_path = "/fund/v1/accounts/query"
    submit_path = "/fund/v1/withdrawals"
    status_path = "/fund/v1/withdrawals/{reference}"
    reasons: ClassVar[dict[str, str]] = {
        "PURCHASE": "HOUSE_PURCHASE",
        "BUILD_RENOVATE": "HOUSE_BUILD_OR_RENOVATION",
        "RENT": "RENT",
        "LOAN_REPAY": "LOAN_REPAYMENT",
        "RETIRE": "RETIREMENT",
        "LEAVE_REGION": "LEAVING_REGION",
        "ILLNESS": "SERIOUS_ILLNESS",
        "DISABILITY": "LOSS_OF_WORK_CAPACITY",
    }
    states: ClassVar[dict[str, str]] = {
        UNDER_REVIEW: "IN_REVIEW",
        APPROVED: "APPROVED",
        PAID: "PAID",
        REJECTED: "REJECTED",
    }
    account_states: ClassVar[dict[str, str]] = {
        "NORMAL": "ACTIVE",
        "FROZEN": "FROZEN",
        "CLOSED": "CLOSED",
    }

    def parse_account_query(self, body: bytes) -> str:
        return _text(_json_object(body), "idNumber", required=True)

    def account_answer(self, account: FundAccount | None, now: datetime) -> bytes:
        if account is None:
            return _dumps({"resultCode": "NOT_FOUND", "message": "no fund account"})
        return _dumps(
            {
                "resultCode": "OK",
                "account": {
                    "accountNo": account.account_no,
                    "accountStatus": self.account_states[account.status],
                    "balanceFen": account.balance_fen,
                    "asOf": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            }
        )

    def parse_submission(self, body: bytes) -> Submission:
        d = _json_object(body)
        return Submission(
            reference=_text(d, "requestRef", required=True),
            id_number=_text(d, "applicant", "idNumber"),
            full_name=_text(d, "applicant", "fullName"),
            account_no=_text(d, "accountNo"),
            reason=self.reason(_text(d, "reasonCode")),
            amount_fen=_fen(d, "amountFen"),
            payee_account=_text(d, "payee", "accountNo"),
            payee_bank=_text(d, "payee", "bankName"),
            certificates=_string_list(d, "attachments"),
            applicant_province=_text(d, "originRegion"),
            idempotency_key=_text(d, "idempotencyKey"),
        )

    def case_answer(self, case: Case | None) -> bytes:
        if case is None:
            return _dumps({"resultCode": "NOT_FOUND", "message": "no such withdrawal"})
        data: dict[str, Any] = {
            "resultCode": "OK",
            "requestRef": case.submission.reference,
            "caseNo": case.case_no,
            "state": self.states[case.status],
            "updatedAt": case.changed_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if case.status == REJECTED:
            data["stateReason"] = self.rejection_text(case)
        if case.status == PAID:
            data["paidAmountFen"] = case.paid_fen
        return _dumps(data)

    def error(self, message: str) -> bytes:
        return _dumps({"resultCode": "BAD_REQUEST", "message": message})


class _Zhejiang(_Dialect):
    """JSON with snake_case keys, epoch milliseconds, Chinese code words, comma-joined proofs."""

    account_path = "/zjgjj/account_query"
    submit_path = "/zjgjj/withdraw_apply"
    status_path = "/zjgjj/withdraw_query"
    reasons: ClassVar[dict[str, str]] = {
        "购房": "HOUSE_PURCHASE",
        "建造翻建大修": "HOUSE_BUILD_OR_RENOVATION",
        "租房": "RENT",
        "偿还贷款": "LOAN_REPAYMENT",
        "离退休": "RETIREMENT",
        "离开本省": "LEAVING_REGION",
        "重大疾病": "SERIOUS_ILLNESS",
        "丧失劳动能力": "LOSS_OF_WORK_CAPACITY",
    }
    states: ClassVar[dict[str, str]] = {
        UNDER_REVIEW: "审核中",
        APPROVED: "审核通过",
        PAID: "已支付",
        REJECTED: "已驳回",
    }
    account_states: ClassVar[dict[str, str]] = {
        "NORMAL": "正常",
        "FROZEN": "冻结",
        "CLOSED": "销户",
    }
    wording = _Shanghai.wording

    def parse_account_query(self, body: bytes) -> str:
        return _text(_json_object(body), "id_card_no", required=True)

    def account_answer(self, account: FundAccount | None, now: datetime) -> bytes:
        if account is None:
            return _dumps({"ret_code": "1004", "ret_msg": "账户不存在"})
        return _dumps(
            {
                "ret_code": "0000",
                "ret_msg": "成功",
                "data": {
                    "account_no": account.account_no,
                    "account_state": self.account_states[account.status],
                    "balance_fen": account.balance_fen,
                    "query_time_ms": _millis(now),
                },
            }
        )

    def parse_submission(self, body: bytes) -> Submission:
        d = _json_object(body)
        proofs = _text(d, "proof_ids")
        return Submission(
            reference=_text(d, "biz_ref", required=True),
            id_number=_text(d, "applicant", "id_card_no"),
            full_name=_text(d, "applicant", "name"),
            account_no=_text(d, "account_no"),
            reason=self.reason(_text(d, "withdraw_reason")),
            amount_fen=_fen(d, "amount_fen"),
            payee_account=_text(d, "payee_account_no"),
            payee_bank=_text(d, "payee_bank_name"),
            certificates=tuple(p for p in proofs.split(",") if p),
            applicant_province=_text(d, "accept_region"),
            idempotency_key=_text(d, "idem_key"),
        )

    def parse_status_query(self, body: bytes) -> str:
        return _text(_json_object(body), "biz_ref", required=True)

    def case_answer(self, case: Case | None) -> bytes:
        if case is None:
            return _dumps({"ret_code": "1004", "ret_msg": "业务不存在"})
        data: dict[str, Any] = {
            "biz_ref": case.submission.reference,
            "case_no": case.case_no,
            "state": self.states[case.status],
            "update_time_ms": _millis(case.changed_at),
        }
        if case.status == REJECTED:
            data["remark"] = self.rejection_text(case)
        if case.status == PAID:
            data["paid_fen"] = case.paid_fen
        return _dumps({"ret_code": "0000", "ret_msg": "成功", "data": data})

    def error(self, message: str) -> bytes:
        return _dumps({"ret_code": "4000", "ret_msg": message})


class _Anhui(_Dialect):
    """XML, two-digit codes, local times "yyyy-MM-dd HH:mm:ss", amounts as yuan strings."""

    account_path = "/gjj/account"
    submit_path = "/gjj/withdrawal"
    status_path = "/gjj/withdrawal/status"
    content_type = "application/xml"
    reasons: ClassVar[dict[str, str]] = {
        "11": "HOUSE_PURCHASE",
        "12": "HOUSE_BUILD_OR_RENOVATION",
        "13": "RENT",
        "14": "LOAN_REPAYMENT",
        "21": "RETIREMENT",
        "22": "LEAVING_REGION",
        "31": "SERIOUS_ILLNESS",
        "32": "LOSS_OF_WORK_CAPACITY",
    }
    states: ClassVar[dict[str, str]] = {
        UNDER_REVIEW: "10",
        APPROVED: "20",
        PAID: "30",
        REJECTED: "40",
    }
    account_states: ClassVar[dict[str, str]] = {"NORMAL": "01", "FROZEN": "02", "CLOSED": "03"}
    wording = _Shanghai.wording

    def parse_account_query(self, body: bytes) -> str:
        text = _xml_root(body, "AccountQuery").findtext("IdNo")
        if not text:
            raise BadNativeRequest("<IdNo> is required")
        return text

    def account_answer(self, account: FundAccount | None, now: datetime) -> bytes:
        if account is None:
            root = ET.Element("AccountResult", code="1")
            ET.SubElement(root, "Message").text = "账户不存在"
            return _xml(root)
        root = ET.Element("AccountResult", code="0")
        for tag, text in (
            ("AccountNo", account.account_no),
            ("AccountState", self.account_states[account.status]),
            ("Balance", fen_to_yuan(account.balance_fen)),
            ("QueryTime", _local(now, "%Y-%m-%d %H:%M:%S")),
        ):
            ET.SubElement(root, tag).text = text
        return _xml(root)

    def parse_submission(self, body: bytes) -> Submission:
        root = _xml_root(body, "WithdrawalApply")
        reference = root.findtext("SerialNo")
        if not reference:
            raise BadNativeRequest("<SerialNo> is required")
        amount = root.findtext("Amount")
        proofs = root.find("Proofs")
        return Submission(
            reference=reference,
            id_number=root.findtext("Applicant/IdNo") or "",
            full_name=root.findtext("Applicant/Name") or "",
            account_no=root.findtext("AccountNo") or "",
            reason=self.reason(root.findtext("Reason") or ""),
            amount_fen=yuan_to_fen(amount) if amount else 0,
            payee_account=root.findtext("Payee/AccountNo") or "",
            payee_bank=root.findtext("Payee/BankName") or "",
            certificates=tuple(
                e.text for e in ([] if proofs is None else proofs.iter("ProofNo")) if e.text
            ),
            applicant_province=root.findtext("AcceptRegion") or "",
            idempotency_key=root.findtext("IdemKey") or "",
        )

    def parse_status_query(self, body: bytes) -> str:
        text = _xml_root(body, "WithdrawalQuery").findtext("SerialNo")
        if not text:
            raise BadNativeRequest("<SerialNo> is required")
        return text

    def case_answer(self, case: Case | None) -> bytes:
        if case is None:
            root = ET.Element("WithdrawalReply", code="1")
            ET.SubElement(root, "Message").text = "业务不存在"
            return _xml(root)
        root = ET.Element("WithdrawalReply", code="0")
        fields = [
            ("SerialNo", case.submission.reference),
            ("CaseNo", case.case_no),
            ("State", self.states[case.status]),
        ]
        if case.status == REJECTED:
            fields.append(("Remark", self.rejection_text(case)))
        if case.status == PAID:
            fields.append(("PaidAmount", fen_to_yuan(case.paid_fen)))
        fields.append(("UpdateTime", _local(case.changed_at, "%Y-%m-%d %H:%M:%S")))
        for tag, text in fields:
            ET.SubElement(root, tag).text = text
        return _xml(root)

    def error(self, message: str) -> bytes:
        root = ET.Element("Error")
        ET.SubElement(root, "Message").text = message
        return _xml(root)


DIALECTS: dict[str, Callable[[], _Dialect]] = {
    "310000": _Shanghai,
    "320000": _Jiangsu,
    "330000": _Zhejiang,
    "340000": _Anhui,
}


# ---- The centre ----------------------------------------------------------------------


def synthetic_accounts(province: str, seed: int = 0) -> dict[str, FundAccount]:
    """The centre's accounts, deterministic from (province, seed); see the module docstring."""
    residents = list(synthetic_residents(province, seed))
    for other in sorted(COUNTIES):
        if other != province:
            residents.extend(synthetic_residents(other, seed)[::3])
    rng = random.Random(f"fund:{province}:{seed}")
    accounts: dict[str, FundAccount] = {}
    for ordinal, resident in enumerate(residents, 1):
        while True:
            number = f"{province[:2]}{rng.randrange(10**10):010d}"
            if number not in accounts:
                break
        accounts[number] = FundAccount(
            account_no=number,
            id_number=resident.id_number,
            balance_fen=rng.randrange(BALANCE_MIN_FEN, BALANCE_MAX_FEN + 1),
            status=_INITIAL_STATUS.get(ordinal, "NORMAL"),
        )
    return accounts


def _dialect_for(province: str, adapter: AdapterConfig | None) -> _Dialect:
    """The hand-written dialect of a shipped province, else the region's mapped one."""
    if province in DIALECTS:
        return DIALECTS[province]()
    if adapter is None or adapter.fund is None:
        raise ValueError(
            f"no simulated fund centre for province {province!r}: pass its [adapter] "
            "config (with [adapter.fund]) to serve it through its mapping"
        )
    return MappedFundDialect(adapter)


def _birth_date(id_number: str) -> date | None:
    try:
        return date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))
    except ValueError:
        return None


class FundCentreSimulator(SimulatorServer):
    """A province's provident fund centre on loopback, with synthetic accounts.

    ``review_delay`` and ``payment_delay`` (seconds) space out the status
    changes so a caller sees UNDER_REVIEW, APPROVED and PAID in turn;
    ``clock`` stamps answers and decides applicants' ages. State lives in the
    object, so it survives :meth:`stop` / :meth:`start` (cases still under
    review are resumed on start). ``adapter`` (the region's ``[adapter]``
    config, with ``[adapter.fund]``) serves a region without a hand-written
    dialect through its own mapping (:mod:`yrd_simulators.mapped`).

    ``state_file``: keep cases, accounts and the payment ledger in that SQLite
    file (:mod:`yrd_simulators.durable`), so they survive a restart of
    the process; :meth:`forget` drops the cases but never the ledger.
    ``lose_answers``: take and act on native requests but answer them HTTP 503,
    as a centre whose answers are lost on the way; ``garble_submit_answers``: take
    and act on submissions but answer them with a body no adapter can read.
    """

    def __init__(
        self,
        province: str,
        *,
        seed: int = 0,
        review_delay: float = 0.05,
        payment_delay: float = 0.05,
        clock: Clock | None = None,
        adapter: AdapterConfig | None = None,
        state_file: Path | None = None,
    ) -> None:
        if review_delay < 0 or payment_delay < 0:
            raise ValueError("review_delay and payment_delay must not be negative")
        super().__init__()
        self.province = province
        self.review_delay = review_delay
        self.payment_delay = payment_delay
        self._clock: Clock = clock or SystemClock()
        self._dialect = _dialect_for(province, adapter)
        #: Accounts by account number.
        self.accounts: dict[str, FundAccount] = synthetic_accounts(province, seed)
        #: Cases by the gateway's reference.
        self.cases: dict[str, Case] = {}
        #: Every payment made, in order: exactly one per paid reference.
        self.payments: list[Payment] = []
        #: Cases by (applicant's province, idempotency key).
        self._by_key: dict[tuple[str, str], Case] = {}
        self._opened = 0
        self.lose_answers = False
        self.garble_submit_answers = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._durable = None if state_file is None else DurableState(state_file)
        if self._durable is not None:
            self._load(self._durable)

    @property
    def paths(self) -> dict[str, str]:
        """The native endpoint paths: account, submit, status."""
        d = self._dialect
        return {"account": d.account_path, "submit": d.submit_path, "status": d.status_path}

    def account_of(self, id_number: str) -> FundAccount | None:
        """The account held by ``id_number`` (the first, should there be several)."""
        return next((a for a in self.accounts.values() if a.id_number == id_number), None)

    def set_status(self, account_no: str, status: str) -> None:
        """Change an account's status (what the admin endpoint does)."""
        if status not in ACCOUNT_STATUSES:
            raise ValueError(f"status must be one of {ACCOUNT_STATUSES}")
        self.accounts[account_no].status = status
        self._save_account(self.accounts[account_no])

    # Serving: start / stop / url / ``async with`` are :class:`SimulatorServer`'s.
    # Stopping also stops reviewing; cases and accounts are kept.

    def _started(self) -> None:
        for case in self.cases.values():
            if case.status not in _FINAL:
                self._schedule(case)

    async def _stopping(self) -> None:
        await self._cancel_reviews()

    async def _cancel_reviews(self) -> None:
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def forget(self) -> int:
        """Lose every case (a centre that lost its state); the ledger of payments
        and the accounts' balances stay. Returns how many cases were dropped."""
        await self._cancel_reviews()
        for case in self.cases.values():
            if case.status == APPROVED:  # approved, never paid: release the reserve
                account = self.accounts[case.submission.account_no]
                account.reserved_fen -= case.submission.amount_fen
                self._save_account(account)
        dropped = len(self.cases)
        self.cases.clear()
        self._by_key.clear()
        if self._durable is not None:
            self._durable.forget("case")
        return dropped

    # ---- Durable state ------------------------------------------------------------------

    def _load(self, durable: DurableState) -> None:
        for number, saved in durable.records("account"):
            if number in self.accounts:
                account = self.accounts[number]
                account.balance_fen = int(saved["balance_fen"])
                account.reserved_fen = int(saved["reserved_fen"])
                account.status = str(saved["status"])
        for reference, saved in durable.records("case"):
            submission = dict(saved["submission"])
            submission["certificates"] = tuple(submission.get("certificates", ()))
            case = Case(
                case_no=str(saved["case_no"]),
                submission=Submission(**submission),
                status=str(saved["status"]),
                changed_at=datetime.fromisoformat(saved["changed_at"]),
                rejection=str(saved["rejection"]),
                paid_fen=int(saved["paid_fen"]),
            )
            self.cases[reference] = case
            self._index(case)
        for _, saved in durable.records("meta"):
            self._opened = int(saved.get("opened", 0))
        self.payments = [
            Payment(str(e["reference"]), str(e["account"]), int(e["amount_fen"]))
            for e in durable.ledger()
        ]

    def _index(self, case: Case) -> None:
        s = case.submission
        if s.idempotency_key:
            self._by_key.setdefault((s.applicant_province, s.idempotency_key), case)

    @staticmethod
    def _case_record(case: Case) -> dict[str, Any]:
        return {
            "case_no": case.case_no,
            "submission": {
                **asdict(case.submission),
                "certificates": list(case.submission.certificates),
            },
            "status": case.status,
            "changed_at": case.changed_at.isoformat(),
            "rejection": case.rejection,
            "paid_fen": case.paid_fen,
        }

    @staticmethod
    def _account_record(account: FundAccount) -> dict[str, Any]:
        return {
            "balance_fen": account.balance_fen,
            "reserved_fen": account.reserved_fen,
            "status": account.status,
        }

    def _save_case(self, case: Case) -> None:
        if self._durable is not None:
            self._durable.put("case", case.submission.reference, self._case_record(case))

    def _save_account(self, account: FundAccount) -> None:
        if self._durable is not None:
            self._durable.put("account", account.account_no, self._account_record(account))

    def close_state(self) -> None:
        """Close the state file (after :meth:`stop`, when done with the centre)."""
        if self._durable is not None:
            self._durable.close()
            self._durable = None

    async def wait_idle(self) -> None:
        """Wait until every case has been reviewed and paid or rejected (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ---- The centre's business -------------------------------------------------------

    def submit(self, submission: Submission) -> Case:
        """Open a case for ``submission``, or return the one already open under its reference."""
        existing = self.cases.get(submission.reference)
        if existing is None and submission.idempotency_key:
            # The same application under another reference (from a gateway that
            # lost its own records and received it again) is the same case.
            keyed = self._by_key.get((submission.applicant_province, submission.idempotency_key))
            if keyed is not None and replace(keyed.submission, reference=submission.reference) == (
                submission
            ):
                existing = keyed
        if existing is not None:
            return existing  # idempotent: a retry never opens a second case
        self._opened += 1
        case = Case(
            case_no=f"{self.province[:2]}WD{self._opened:08d}",
            submission=submission,
            status=UNDER_REVIEW,
            changed_at=self._clock.now(),
        )
        self.cases[submission.reference] = case
        self._index(case)
        if self._durable is not None:
            self._durable.put("meta", "counters", {"opened": self._opened})
        rejection = self._intake(submission)
        if rejection:
            self._set(case, REJECTED, rejection)
        else:
            self._save_case(case)
            if self._runner is not None:
                self._schedule(case)
        return case

    def _intake(self, s: Submission) -> str:
        """Why the centre refuses the application at once ("" when it takes it for review)."""
        if not (s.id_number and s.full_name and s.account_no and s.payee_account and s.payee_bank):
            return "incomplete"
        if s.reason is None:
            return "reason"
        if s.amount_fen <= 0:
            return "amount"
        if s.account_no not in self.accounts:
            return "unknown_account"
        return ""

    def _review(self, case: Case) -> str:
        """The review rules; the rejection key, or "" to approve."""
        s = case.submission
        account = self.accounts[s.account_no]
        if account.status == "FROZEN":
            return "frozen"
        if account.status == "CLOSED":
            return "closed"
        if account.id_number != s.id_number:
            return "not_owner"
        if s.amount_fen > account.balance_fen - account.reserved_fen:
            return "exceeds_balance"
        if s.reason in _NEEDS_CERTIFICATE and not s.certificates:
            return "certificate"
        if s.reason == "RENT" and s.amount_fen > RENT_LIMIT_FEN:
            return "rent_limit"
        if s.reason == "RETIREMENT":
            birth = _birth_date(s.id_number)
            today = self._clock.now().astimezone(_CST).date()
            if birth is None or _age(birth, today) < RETIREMENT_AGE:
                return "not_retired"
            if s.amount_fen != account.balance_fen - account.reserved_fen:
                return "retirement_full"
        return ""

    def _schedule(self, case: Case) -> None:
        task = asyncio.get_running_loop().create_task(self._process(case))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, case: Case) -> None:
        if case.status == UNDER_REVIEW:
            await asyncio.sleep(self.review_delay)
            rejection = self._review(case)
            if rejection:
                self._set(case, REJECTED, rejection)
                return
            account = self.accounts[case.submission.account_no]
            account.reserved_fen += case.submission.amount_fen
            self._save_account(account)
            self._set(case, APPROVED)
        if case.status == APPROVED:
            await asyncio.sleep(self.payment_delay)
            self._pay(case)

    def _pay(self, case: Case) -> None:
        # No await between the check and the update: atomic on the event loop,
        # so a reference is paid exactly once.
        if case.status != APPROVED:
            return
        s = case.submission
        account = self.accounts[s.account_no]
        account.reserved_fen -= s.amount_fen
        account.balance_fen -= s.amount_fen
        case.paid_fen = s.amount_fen
        case.status, case.rejection, case.changed_at = PAID, "", self._clock.now()
        if self._durable is not None:
            # The payment, the case and the balance on disk at once.
            self._durable.record(
                {
                    "reference": s.reference,
                    "account": s.account_no,
                    "amount_fen": s.amount_fen,
                    "applicant_province": s.applicant_province,
                    "idempotency_key": s.idempotency_key,
                },
                with_records={
                    ("case", s.reference): self._case_record(case),
                    ("account", s.account_no): self._account_record(account),
                },
            )
        self.payments.append(Payment(s.reference, s.account_no, s.amount_fen))

    def _set(self, case: Case, status: str, rejection: str = "") -> None:
        case.status = status
        case.rejection = rejection
        case.changed_at = self._clock.now()
        self._save_case(case)

    # ---- HTTP ------------------------------------------------------------------------

    def _routes(self, router: web.UrlDispatcher) -> None:
        d = self._dialect
        router.add_post(d.account_path, self._native_account)
        router.add_post(d.submit_path, self._native_submit)
        if d.status_by_get:
            router.add_get(d.status_path, self._native_status)
        else:
            router.add_post(d.status_path, self._native_status)
        router.add_get("/admin/accounts", self._admin_accounts)
        router.add_post("/admin/accounts/{account_no}/status", self._admin_status)
        router.add_get("/admin/payments", self._admin_payments)
        router.add_get("/admin/withdrawals", self._admin_withdrawals)
        router.add_post("/admin/forget", self._admin_forget)
        router.add_post("/admin/faults", self._admin_faults)

    def _native_media(self) -> str:
        return self._dialect.content_type

    async def _native_account(self, request: web.Request) -> web.Response:
        try:
            id_number = self._dialect.parse_account_query(await request.read())
        except BadNativeRequest as exc:
            return self._native(self._dialect.error(str(exc)), 400)
        return self._native(self._dialect.account_answer(self.account_of(id_number), self._now()))

    async def _native_submit(self, request: web.Request) -> web.Response:
        try:
            submission = self._dialect.parse_submission(await request.read())
        except BadNativeRequest as exc:
            return self._native(self._dialect.error(str(exc)), 400)
        case = self.submit(submission)
        if self.lose_answers:
            return self._native(self._dialect.error("answer lost"), 503)
        if self.garble_submit_answers:
            return web.Response(body=b"\x00garbled", content_type="application/octet-stream")
        return self._native(self._dialect.submit_answer(case))

    async def _native_status(self, request: web.Request) -> web.Response:
        if self._dialect.status_by_get:
            reference = request.match_info["reference"]
        else:
            try:
                reference = self._dialect.parse_status_query(await request.read())
            except BadNativeRequest as exc:
                return self._native(self._dialect.error(str(exc)), 400)
        case = self.cases.get(reference)
        if self.lose_answers:
            return self._native(self._dialect.error("answer lost"), 503)
        return self._native(self._dialect.case_answer(case))

    async def _admin_accounts(self, request: web.Request) -> web.Response:
        wanted = request.query.get("id_number")
        return web.json_response(
            [
                {
                    "account": a.account_no,
                    "id_number": a.id_number,
                    "balance_fen": a.balance_fen,
                    "status": a.status,
                }
                for a in self.accounts.values()
                if wanted is None or a.id_number == wanted
            ]
        )

    async def _admin_status(self, request: web.Request) -> web.Response:
        return await admin_set_choice(
            request,
            key="account_no",
            known=self.accounts,
            answer_key="account",
            field="status",
            choices=ACCOUNT_STATUSES,
            apply=self.set_status,
        )

    async def _admin_payments(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {"reference": p.reference, "account": p.account, "amount_fen": p.amount_fen}
                for p in self.payments
            ]
        )

    async def _admin_withdrawals(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "reference": reference,
                    "case_no": c.case_no,
                    "status": c.status,
                    "reason": _REJECTIONS.get(c.rejection, ""),
                    "amount_fen": c.submission.amount_fen,
                    "paid_fen": c.paid_fen,
                }
                for reference, c in self.cases.items()
            ]
        )

    async def _admin_forget(self, request: web.Request) -> web.Response:
        return web.json_response({"forgotten_cases": await self.forget()})

    async def _admin_faults(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body is None:
            return not_an_object()
        lose = body.get("lose_answers")
        if not isinstance(lose, bool):
            return json_error(400, "lose_answers must be true or false")
        self.lose_answers = lose
        return web.json_response({"lose_answers": self.lose_answers})

    def _now(self) -> datetime:
        return self._clock.now()


def _age(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


class MappedFundDialect(_Dialect):
    """The fund centre's endpoints in the region's ``[adapter.fund]`` documents."""

    # Codes are the region's own: reading and writing go through its code tables.
    reasons: ClassVar[dict[str, str]] = {}
    states: ClassVar[dict[str, str]] = {}
    account_states: ClassVar[dict[str, str]] = {}

    def __init__(self, adapter: AdapterConfig) -> None:
        if adapter.fund is None:
            raise ValueError("the region's [adapter] has no [adapter.fund] section")
        self._translator = Translator(adapter)
        self.account_path = adapter.fund.account_path
        self.submit_path = adapter.fund.submit_path
        self.status_path = adapter.fund.status_path
        self.content_type = self._translator.content_type.split(";", 1)[0]

    def _decode(self, message: str, body: bytes) -> dict[str, Any]:
        try:
            return self._translator.decode(message, body)
        except TranslationError as exc:
            raise BadNativeRequest(str(exc)) from None

    def parse_account_query(self, body: bytes) -> str:
        return str(self._decode("fund.account_query", body)["id_number"])

    def account_answer(self, account: FundAccount | None, now: datetime) -> bytes:
        if account is None:
            return self._translator.encode("fund.account", {"found": False})
        canonical = {
            "found": True,
            "fund_account": account.account_no,
            "status": account.status,
            "balance_fen": account.balance_fen,
            "as_of": format_timestamp(now),
        }
        return self._translator.encode(
            "fund.account", mapped.fields_of(self._translator, "fund.account", canonical)
        )

    def parse_submission(self, body: bytes) -> Submission:
        application = self._decode("fund.withdrawal", body)
        applicant = application.get("applicant", {})
        return Submission(
            reference=str(application["reference"]),
            id_number=str(applicant.get("id_number", "")),
            full_name=str(applicant.get("full_name", "")),
            account_no=str(application.get("fund_account", "")),
            reason=application.get("reason"),
            amount_fen=int(application.get("amount_fen", 0)),
            payee_account=str(application.get("payee_account", "")),
            payee_bank=str(application.get("payee_bank", "")),
            certificates=tuple(application.get("supporting_certificates", ())),
            applicant_province=str(application.get("applicant_province", "")),
            idempotency_key=str(application.get("idempotency_key", "")),
        )

    def parse_status_query(self, body: bytes) -> str:
        return str(self._decode("fund.status_query", body)["reference"])

    def _case(self, message: str, case: Case | None) -> bytes:
        if case is None:
            return self._translator.encode(message, {"found": False})
        canonical: dict[str, Any] = {
            "found": True,
            "reference": case.submission.reference,
            "remote_reference": case.case_no,
            "status": case.status,
            "changed_at": format_timestamp(case.changed_at),
        }
        if case.status == REJECTED:
            canonical["status_reason"] = self.rejection_text(case)
        if case.status == PAID:
            canonical["paid_amount_fen"] = case.paid_fen
        return self._translator.encode(
            message, mapped.fields_of(self._translator, message, canonical)
        )

    def case_answer(self, case: Case | None) -> bytes:
        return self._case("fund.status", case)

    def submit_answer(self, case: Case) -> bytes:
        return self._case("fund.submit_answer", case)

    def error(self, message: str) -> bytes:
        return mapped.error_document(self._translator, message)
