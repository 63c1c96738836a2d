"""A province's e-certificate library, simulated: a real HTTP server on loopback.

It stands for the province's *existing* certificate library, so its native
endpoint is written by hand for each province below and deliberately does
**not** use the mapping engine: a wrong ``[adapter.certificate]`` mapping
fails against this simulator as it would against the real library. What it
shares with the gateway is the national standard: the category catalogue,
the licence identifier and the seal (computed over the canonical form, by
:func:`gateway.trust.seals.seal_certificate`).

Certificates (in memory, deterministic from province and seed, sealed with
the province's seal key): for each of the province's synthetic residents an
identity card, a household register and a social security card, and by turn
marriage, divorce, birth, education, real-estate, driving, vehicle, social
insurance, provident fund, qualification and disability certificates;
residence permits for some residents of the other provinces; business
licences (and some food permits) for synthetic organisations with valid
credit codes. Two are FORGED (:attr:`~CertificateLibrarySimulator.forged`:
one with its seal bytes corrupted, one altered after sealing) and two are
EXPIRED (:attr:`~CertificateLibrarySimulator.expired`: sealed, with an expiry
date in the past).

Consents: references such as ``CONSENT-330000-0001``, each for one holder,
one requesting province and purpose, until an expiry instant. A few are
recorded at start (one expired); more through :meth:`add_consent` or the
admin endpoint.

Native endpoint: POST the province's fetch request (category in the
province's own code, holder ID number or credit code, optional certificate
number, consent reference, requesting province, purpose). The library checks
the consent first (so that a request without one learns nothing about the
holder): unknown reference → consent missing; another holder → other
holder; another requesting province → other province; past its expiry →
expired. Then the certificate: none → not found. Each outcome has its own
native result code. A document that cannot be read, or an unknown category
code, gets HTTP 400.

Harness endpoints (uniform JSON, for tests and demos):

- ``GET /admin/certificates[?holder_id=…]`` → ``[{"category_code",
  "local_category_code", "certificate_number", "licence_id", "holder_id",
  "holder_kind", "issue_date", "expiry_date", "forged", "expired"}]``;
- ``GET /admin/consents`` → ``[{"reference", "holder_id",
  "requesting_province", "purpose", "expires_at"}]``;
- ``POST /admin/consents`` with ``{"holder_id", "expires_at" (RFC 3339),
  "requesting_province", "purpose"?}`` → 201 ``{"reference"}``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import random
import re
import xml.etree.ElementTree as ET  # building only; parsing uses defusedxml
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from aiohttp import web
from stdnum.cn import uscc

from adapters.catalogue import CATALOGUE, FieldKind
from adapters.certificate import licence_id
from gateway.core.clock import Clock, SystemClock
from gateway.core.crypto import load_private_key
from gateway.trust.seals import seal_certificate
from yrd.certificate.v1 import certificate_pb2
from yrd.common.v1 import common_pb2
from yrd_simulators.documents import BadNativeRequest as BadNativeRequest
from yrd_simulators.documents import dumps as _dumps
from yrd_simulators.documents import fen_to_yuan as _fen_to_yuan
from yrd_simulators.documents import json_object as _json_object
from yrd_simulators.documents import sub as _sub
from yrd_simulators.documents import text as _text
from yrd_simulators.documents import xml as _xml
from yrd_simulators.documents import xml_root as _xml_root
from yrd_simulators.residents import COUNTIES, Resident, synthetic_residents
from yrd_simulators.server import SimulatorServer, json_error, json_object, not_an_object

_CST = ZoneInfo("Asia/Shanghai")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

FOUND = "FOUND"
NOT_FOUND = "NOT_FOUND"
CONSENT_MISSING = "CONSENT_MISSING"
CONSENT_EXPIRED = "CONSENT_EXPIRED"
CONSENT_OTHER_HOLDER = "CONSENT_OTHER_HOLDER"
CONSENT_OTHER_PROVINCE = "CONSENT_OTHER_PROVINCE"

_PROVINCE_NAMES = {"310000": "上海市", "320000": "江苏省", "330000": "浙江省", "340000": "安徽省"}

#: Issuing authorities: role → (name suffix, categories it issues).
_AUTHORITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "public_security": ("公安厅", ("10100000", "10200000", "10300000", "15100000", "15200000")),
    "civil_affairs": ("民政厅", ("11100000", "11100100", "11300000")),
    "health": ("卫生健康委员会", ("11200000", "11400000")),
    "education": ("教育厅", ("12100000", "12200000", "12300000")),
    "hrss": ("人力资源和社会保障厅", ("12400000", "16100000", "16200000")),
    "natural_resources": ("自然资源厅", ("13100000",)),
    "housing": ("住房和城乡建设厅", ("13200000",)),
    "market": ("市场监督管理局", ("14100000", "14200000")),
    "fund": ("住房公积金管理中心", ("16300000",)),
    "disabled": ("残疾人联合会", ("16400000",)),
}

#: Validity in years of the categories that expire.
_VALIDITY_YEARS = {"10100000": 20, "10300000": 1, "14200000": 5, "15100000": 6}

_SCHOOLS = ("复旦大学", "南京大学", "浙江大学", "中国科学技术大学", "同济大学", "东南大学")
_MAJORS = ("计算机科学与技术", "法学", "临床医学", "会计学", "土木工程", "汉语言文学")
_STREETS = ("人民路", "解放路", "中山路", "建设路", "和平街", "文化路", "新华路", "长江路")
_COMPANY_WORDS = ("长江", "新程", "华信", "瑞丰", "天成", "博远", "恒通", "明德")
_COMPANY_TRADES = ("科技", "贸易", "餐饮", "物流", "建筑", "咨询")


@dataclass
class Consent:
    """One consent recorded by the holder's province."""

    reference: str
    holder_id: str
    requesting_province: str
    expires_at: datetime
    purpose: str = ""


@dataclass(frozen=True)
class FetchQuery:
    """A native fetch request, read (national category code)."""

    category_code: str
    holder_id: str
    certificate_number: str
    consent_reference: str
    requesting_province: str
    purpose: str


# ---- Native helpers ------------------------------------------------------------------


def _midnight_millis(day: date) -> int:
    midnight = datetime(day.year, day.month, day.day, tzinfo=_CST)
    return (midnight - _EPOCH) // timedelta(milliseconds=1)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.capitalize() for p in rest)


def _pascal(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("_"))


# ---- Dialects: each province's native library endpoint -------------------------------


class _Dialect(ABC):
    """One province's native certificate documents and codes."""

    fetch_path: str
    content_type: str = "application/json"
    #: National category code → the province's own code.
    categories: ClassVar[dict[str, str]]
    #: Outcome → native result code.
    outcomes: ClassVar[dict[str, str]]

    def national(self, native: str) -> str:
        for national, code in self.categories.items():
            if code == native:
                return national
        raise BadNativeRequest("unknown certificate category code")

    @abstractmethod
    def parse_request(self, body: bytes) -> FetchQuery:
        """The fetch request; raises BadNativeRequest."""

    @abstractmethod
    def answer(self, outcome: str, cert: certificate_pb2.Certificate | None) -> bytes:
        """The native answer (the certificate with FOUND)."""

    @abstractmethod
    def error(self, message: str) -> bytes:
        """The native body of an HTTP 400 answer."""

    def field_value(self, kind: FieldKind, value: str) -> Any:
        """A structured field's canonical value in this province's format."""
        return value


def _field_kinds(cert: certificate_pb2.Certificate) -> dict[str, FieldKind]:
    return {f.name: f.kind for f in CATALOGUE[cert.category_code].fields}


class _Shanghai(_Dialect):
    """JSON, pinyin-initial keys, yyyyMMdd dates, amounts in fen, fhdm result codes."""

    fetch_path = "/api/dzzz/hq"  # 电子证照 / 获取
    categories: ClassVar[dict[str, str]] = {
        "10100000": "0101",
        "10200000": "0102",
        "10300000": "0103",
        "11100000": "0201",
        "11100100": "0202",
        "11200000": "0203",
        "11300000": "0204",
        "11400000": "0205",
        "12100000": "0301",
        "12200000": "0302",
        "12300000": "0303",
        "12400000": "0304",
        "13100000": "0401",
        "13200000": "0402",
        "14100000": "0501",
        "14200000": "0502",
        "15100000": "0601",
        "15200000": "0602",
        "16100000": "0701",
        "16200000": "0702",
        "16300000": "0703",
        "16400000": "0801",
    }
    outcomes: ClassVar[dict[str, str]] = {
        FOUND: "00",
        NOT_FOUND: "04",
        CONSENT_MISSING: "11",
        CONSENT_EXPIRED: "12",
        CONSENT_OTHER_HOLDER: "13",
        CONSENT_OTHER_PROVINCE: "14",
    }
    #: Catalogue field → Shanghai's pinyin-initial key.
    keys: ClassVar[dict[str, str]] = {
        "address": "zz",  # 住址
        "area_m2": "mj",  # 面积
        "award_date": "sxrq",  # 授予日期
        "birth_date": "csrq",  # 出生日期
        "birth_place": "csdd",  # 出生地点
        "business_address": "jycs",  # 经营场所
        "business_items": "jyxm",  # 经营项目
        "business_scope": "jyfw",  # 经营范围
        "card_number": "kh",  # 卡号
        "child_birth_date": "zncsrq",  # 子女出生日期
        "child_gender": "znxb",  # 子女性别
        "child_name": "znxm",  # 子女姓名
        "company_name": "qymc",  # 企业名称
        "company_type": "qylx",  # 企业类型
        "contribution_months": "jfys",  # 缴费月数
        "death_date": "swrq",  # 死亡日期
        "death_place": "swdd",  # 死亡地点
        "deceased_id": "szsfzh",  # 死者身份证号
        "deceased_name": "szxm",  # 死者姓名
        "degree_name": "xwmc",  # 学位名称
        "disability_category": "cjlb",  # 残疾类别
        "disability_level": "cjdj",  # 残疾等级
        "education_level": "xlcc",  # 学历层次
        "employer_credit_code": "dwxydm",  # 单位信用代码
        "employer_name": "dwmc",  # 单位名称
        "enrolment_date": "rxrq",  # 入学日期
        "establishment_date": "clrq",  # 成立日期
        "ethnicity": "mz",  # 民族
        "father_id": "fqsfzh",  # 父亲身份证号
        "father_name": "fqxm",  # 父亲姓名
        "first_issue_date": "cclzrq",  # 初次领证日期
        "full_name": "xm",  # 姓名
        "fund_account": "gjjzh",  # 公积金账号
        "gender": "xb",  # 性别
        "graduation_date": "byrq",  # 毕业日期
        "guardian_name": "jhrxm",  # 监护人姓名
        "household_head_name": "hzxm",  # 户主姓名
        "household_number": "hh",  # 户号
        "insurance_type": "xzlx",  # 险种类型
        "insured_region": "cbdq",  # 参保地区
        "issuing_region": "fkdq",  # 发卡地区
        "land_use_term_end": "tdsyqx",  # 土地使用期限
        "lease_end": "zlzzrq",  # 租赁终止日期
        "lease_start": "zlqsrq",  # 租赁起始日期
        "legal_representative": "fddbr",  # 法定代表人
        "lessor_name": "czrxm",  # 出租人姓名
        "licence_class": "zjcx",  # 准驾车型
        "major": "zy",  # 专业
        "monthly_deposit_fen": "yjce",  # 月缴存额
        "mother_id": "mqsfzh",  # 母亲身份证号
        "mother_name": "mqxm",  # 母亲姓名
        "occupation": "zygz",  # 职业工种
        "plate_number": "hphm",  # 号牌号码
        "property_address": "zl",  # 坐落
        "property_unit_number": "bdcdyh",  # 不动产单元号
        "qualification_type": "zglb",  # 资格类别
        "registered_address": "zs",  # 住所
        "registered_capital_fen": "zczb",  # 注册资本
        "registered_region": "hjdq",  # 户籍地区
        "registration_authority": "djjg",  # 登记机关
        "registration_date": "djrq",  # 登记日期
        "relation_to_head": "yhzgx",  # 与户主关系
        "residence_region": "jzdq",  # 居住地区
        "right_type": "qllx",  # 权利类型
        "school_name": "xxmc",  # 学校名称
        "skill_level": "jndj",  # 技能等级
        "social_security_number": "shbzhm",  # 社会保障号码
        "spouse_a_id": "jfsfzh",  # 甲方身份证号
        "spouse_a_name": "jfxm",  # 甲方姓名
        "spouse_b_id": "yfsfzh",  # 乙方身份证号
        "spouse_b_name": "yfxm",  # 乙方姓名
        "start_date": "qsrq",  # 起始日期
        "subject": "rjxk",  # 任教学科
        "usage": "yt",  # 用途
        "valid_from": "yxqq",  # 有效期起
        "valid_until": "yxqzr",  # 有效期止日
        "vehicle_type": "cllx",  # 车辆类型
        "vin": "clsbdh",  # 车辆识别代号
    }

    def parse_request(self, body: bytes) -> FetchQuery:
        d = _json_object(body)
        return FetchQuery(
            category_code=self.national(_text(d, "zzlxdm", required=True)),
            holder_id=_text(d, "czrzjhm", required=True),
            certificate_number=_text(d, "zzbh"),
            consent_reference=_text(d, "sqbh"),
            requesting_province=_text(d, "qqdq", required=True),
            purpose=_text(d, "yt"),
        )

    def field_value(self, kind: FieldKind, value: str) -> Any:
        if kind is FieldKind.DATE:
            return value.replace("-", "")
        if kind in (FieldKind.FEN, FieldKind.COUNT):
            return int(value)
        return value

    def certificate(self, cert: certificate_pb2.Certificate) -> dict[str, Any]:
        if cert.holder.WhichOneof("party") == "person":
            p = cert.holder.person
            holder: dict[str, Any] = {"gr": {"sfzh": p.id_number, "xm": p.full_name}}
        else:
            o = cert.holder.organisation
            holder = {"dw": {"tyshxydm": o.credit_code, "mc": o.name, "dq": o.region}}
        kinds = _field_kinds(cert)
        doc: dict[str, Any] = {
            "zzlxdm": self.categories[cert.category_code],  # 证照类型代码
            "zzbh": cert.certificate_number,  # 证照编号
            "zzbs": cert.licence_id,  # 证照标识
            "czr": holder,  # 持证人
            "fzjgdm": cert.issuer_credit_code,  # 发证机构代码
            "fzjgmc": cert.issuer_name,  # 发证机构名称
            "fzsf": cert.issuer_province,  # 发证省份
            "fzrq": cert.issue_date.replace("-", ""),  # 发证日期
            "zzxx": {self.keys[k]: self.field_value(kinds[k], v) for k, v in cert.fields.items()},
            "qz": _b64(cert.seal),  # 签章
            "qzmy": cert.seal_key_id,  # 签章密钥
            "qzsf": cert.seal_algorithm,  # 签章算法
        }
        if cert.expiry_date:
            doc["yxqz"] = cert.expiry_date.replace("-", "")  # 有效期至
        if cert.attachments:
            doc["fj"] = [  # 附件
                {"wjm": a.name, "wjlx": a.media_type, "wjdx": a.size_bytes, "zy": a.sha256.hex()}
                for a in cert.attachments
            ]
        return doc

    def answer(self, outcome: str, cert: certificate_pb2.Certificate | None) -> bytes:
        doc: dict[str, Any] = {"fhdm": self.outcomes[outcome], "fhxx": _OUTCOME_TEXT[outcome]}
        if cert is not None:
            doc["sj"] = self.certificate(cert)
        return _dumps(doc)

    def error(self, message: str) -> bytes:
        return _dumps({"fhdm": "40", "fhxx": message})


class _Jiangsu(_Dialect):
    """JSON, camelCase keys, ISO dates, amounts in fen, English result codes."""

    fetch_path = "/certificate/v1/fetch"
    categories: ClassVar[dict[str, str]] = {
        "10100000": "ID_CARD",
        "10200000": "HOUSEHOLD_REGISTER",
        "10300000": "RESIDENCE_PERMIT",
        "11100000": "MARRIAGE",
        "11100100": "DIVORCE",
        "11200000": "BIRTH_MEDICAL",
        "11300000": "ONLY_CHILD_HONOUR",
        "11400000": "DEATH_MEDICAL",
        "12100000": "DIPLOMA",
        "12200000": "DEGREE",
        "12300000": "TEACHER_QUALIFICATION",
        "12400000": "VOCATIONAL_QUALIFICATION",
        "13100000": "REAL_ESTATE_TITLE",
        "13200000": "LEASE_REGISTRATION",
        "14100000": "BUSINESS_LICENCE",
        "14200000": "FOOD_PERMIT",
        "15100000": "DRIVING_LICENCE",
        "15200000": "VEHICLE_LICENCE",
        "16100000": "SOCIAL_SECURITY_CARD",
        "16200000": "SOCIAL_INSURANCE_RECORD",
        "16300000": "FUND_DEPOSIT_PROOF",
        "16400000": "DISABILITY",
    }
    outcomes: ClassVar[dict[str, str]] = {
        FOUND: "OK",
        NOT_FOUND: "NOT_FOUND",
        CONSENT_MISSING: "CONSENT_NOT_FOUND",
        CONSENT_EXPIRED: "CONSENT_EXPIRED",
        CONSENT_OTHER_HOLDER: "CONSENT_HOLDER_MISMATCH",
        CONSENT_OTHER_PROVINCE: "CONSENT_REQUESTER_MISMATCH",
    }

    def parse_request(self, body: bytes) -> FetchQuery:
        d = _json_object(body)
        return FetchQuery(
            category_code=self.national(_text(d, "categoryCode", required=True)),
            holder_id=_text(d, "holderId", required=True),
            certificate_number=_text(d, "certificateNo"),
            consent_reference=_text(d, "consentRef"),
            requesting_province=_text(d, "requesterRegion", required=True),
            purpose=_text(d, "purpose"),
        )

    def field_value(self, kind: FieldKind, value: str) -> Any:
        if kind in (FieldKind.FEN, FieldKind.COUNT):
            return int(value)
        return value

    def certificate(self, cert: certificate_pb2.Certificate) -> dict[str, Any]:
        if cert.holder.WhichOneof("party") == "person":
            p = cert.holder.person
            holder: dict[str, Any] = {"person": {"idNumber": p.id_number, "fullName": p.full_name}}
        else:
            o = cert.holder.organisation
            org = {"creditCode": o.credit_code, "name": o.name}
            if o.region:
                org["regionCode"] = o.region
            holder = {"organisation": org}
        kinds = _field_kinds(cert)
        doc: dict[str, Any] = {
            "categoryCode": self.categories[cert.category_code],
            "certificateNo": cert.certificate_number,
            "licenceId": cert.licence_id,
            "holder": holder,
            "issuer": {
                "creditCode": cert.issuer_credit_code,
                "name": cert.issuer_name,
                "region": cert.issuer_province,
            },
            "issueDate": cert.issue_date,
            "data": {_camel(k): self.field_value(kinds[k], v) for k, v in cert.fields.items()},
            "seal": {
                "value": _b64(cert.seal),
                "keyId": cert.seal_key_id,
                "algorithm": cert.seal_algorithm,
            },
        }
        if cert.expiry_date:
            doc["expiryDate"] = cert.expiry_date
        if cert.attachments:
            doc["attachments"] = [
                {
                    "fileName": a.name,
                    "mediaType": a.media_type,
                    "sizeBytes": a.size_bytes,
                    "sha256": _b64(a.sha256),
                }
                for a in cert.attachments
            ]
        return doc

    def answer(self, outcome: str, cert: certificate_pb2.Certificate | None) -> bytes:
        doc: dict[str, Any] = {"resultCode": self.outcomes[outcome], "message": outcome.lower()}
        if cert is not None:
            doc["certificate"] = self.certificate(cert)
        return _dumps(doc)

    def error(self, message: str) -> bytes:
        return _dumps({"resultCode": "BAD_REQUEST", "message": message})


class _Zhejiang(_Dialect):
    """JSON, snake_case keys, dates as epoch milliseconds of local midnight, Chinese codes."""

    fetch_path = "/zjzz/cert_fetch"
    categories: ClassVar[dict[str, str]] = {code: c.name_zh for code, c in CATALOGUE.items()}
    outcomes: ClassVar[dict[str, str]] = {
        FOUND: "0000",
        NOT_FOUND: "2004",
        CONSENT_MISSING: "3001",
        CONSENT_EXPIRED: "3002",
        CONSENT_OTHER_HOLDER: "3003",
        CONSENT_OTHER_PROVINCE: "3004",
    }

    def parse_request(self, body: bytes) -> FetchQuery:
        d = _json_object(body)
        return FetchQuery(
            category_code=self.national(_text(d, "cert_type", required=True)),
            holder_id=_text(d, "holder_id_no", required=True),
            certificate_number=_text(d, "cert_no"),
            consent_reference=_text(d, "auth_code"),
            requesting_province=_text(d, "request_region", required=True),
            purpose=_text(d, "purpose"),
        )

    def field_value(self, kind: FieldKind, value: str) -> Any:
        if kind is FieldKind.DATE:
            return _midnight_millis(date.fromisoformat(value))
        if kind in (FieldKind.FEN, FieldKind.COUNT):
            return int(value)
        return value

    def certificate(self, cert: certificate_pb2.Certificate) -> dict[str, Any]:
        if cert.holder.WhichOneof("party") == "person":
            p = cert.holder.person
            holder: dict[str, Any] = {"person": {"id_card_no": p.id_number, "name": p.full_name}}
        else:
            o = cert.holder.organisation
            org = {"credit_code": o.credit_code, "org_name": o.name}
            if o.region:
                org["region"] = o.region
            holder = {"org": org}
        kinds = _field_kinds(cert)
        doc: dict[str, Any] = {
            "cert_type": self.categories[cert.category_code],
            "cert_no": cert.certificate_number,
            "license_id": cert.licence_id,
            "holder": holder,
            "issuer_credit_code": cert.issuer_credit_code,
            "issuer_name": cert.issuer_name,
            "issuer_region": cert.issuer_province,
            "issue_millis": _midnight_millis(date.fromisoformat(cert.issue_date)),
            "cert_data": {k: self.field_value(kinds[k], v) for k, v in cert.fields.items()},
            "sign_value": _b64(cert.seal),
            "sign_key_id": cert.seal_key_id,
            "sign_alg": cert.seal_algorithm,
        }
        if cert.expiry_date:
            doc["expire_millis"] = _midnight_millis(date.fromisoformat(cert.expiry_date))
        if cert.attachments:
            doc["files"] = [
                {
                    "file_name": a.name,
                    "mime": a.media_type,
                    "size": a.size_bytes,
                    "sha256_hex": a.sha256.hex(),
                }
                for a in cert.attachments
            ]
        return doc

    def answer(self, outcome: str, cert: certificate_pb2.Certificate | None) -> bytes:
        doc: dict[str, Any] = {
            "ret_code": self.outcomes[outcome],
            "ret_msg": _OUTCOME_TEXT[outcome],
        }
        if cert is not None:
            doc["data"] = self.certificate(cert)
        return _dumps(doc)

    def error(self, message: str) -> bytes:
        return _dumps({"ret_code": "4000", "ret_msg": message})


class _Anhui(_Dialect):
    """XML, PascalCase elements, yyyy/MM/dd dates, amounts as yuan strings, two-digit codes."""

    fetch_path = "/zz/fetch"
    content_type = "application/xml"
    categories: ClassVar[dict[str, str]] = {
        "10100000": "11",
        "10200000": "12",
        "10300000": "13",
        "11100000": "21",
        "11100100": "22",
        "11200000": "23",
        "11300000": "24",
        "11400000": "25",
        "12100000": "31",
        "12200000": "32",
        "12300000": "33",
        "12400000": "34",
        "13100000": "41",
        "13200000": "42",
        "14100000": "51",
        "14200000": "52",
        "15100000": "61",
        "15200000": "62",
        "16100000": "71",
        "16200000": "72",
        "16300000": "73",
        "16400000": "81",
    }
    outcomes: ClassVar[dict[str, str]] = {
        FOUND: "0",
        NOT_FOUND: "1",
        CONSENT_MISSING: "21",
        CONSENT_EXPIRED: "22",
        CONSENT_OTHER_HOLDER: "23",
        CONSENT_OTHER_PROVINCE: "24",
    }

    def parse_request(self, body: bytes) -> FetchQuery:
        root = _xml_root(body, "CertRequest")

        def text(tag: str, required: bool = False) -> str:
            value = root.findtext(tag) or ""
            if required and not value:
                raise BadNativeRequest(f"<{tag}> is required")
            return value

        return FetchQuery(
            category_code=self.national(text("CertType", True)),
            holder_id=text("HolderId", True),
            certificate_number=text("CertNo"),
            consent_reference=text("AuthNo"),
            requesting_province=text("RequestRegion", True),
            purpose=text("Purpose"),
        )

    def field_value(self, kind: FieldKind, value: str) -> Any:
        if kind is FieldKind.DATE:
            return value.replace("-", "/")
        if kind is FieldKind.FEN:
            return _fen_to_yuan(int(value))
        return value

    def certificate(
        self, parent: ET.Element | None, cert: certificate_pb2.Certificate
    ) -> ET.Element:
        root = ET.Element("Certificate") if parent is None else ET.SubElement(parent, "Certificate")
        _sub(root, "CertType", self.categories[cert.category_code])
        _sub(root, "CertNo", cert.certificate_number)
        _sub(root, "LicenceId", cert.licence_id)
        holder = ET.SubElement(root, "Holder")
        if cert.holder.WhichOneof("party") == "person":
            person = ET.SubElement(holder, "Person")
            _sub(person, "IdNo", cert.holder.person.id_number)
            _sub(person, "Name", cert.holder.person.full_name)
        else:
            org = ET.SubElement(holder, "Org")
            _sub(org, "CreditCode", cert.holder.organisation.credit_code)
            _sub(org, "OrgName", cert.holder.organisation.name)
            if cert.holder.organisation.region:
                _sub(org, "Region", cert.holder.organisation.region)
        _sub(root, "IssuerCode", cert.issuer_credit_code)
        _sub(root, "IssuerName", cert.issuer_name)
        _sub(root, "IssuerRegion", cert.issuer_province)
        _sub(root, "IssueDate", cert.issue_date.replace("-", "/"))
        if cert.expiry_date:
            _sub(root, "ExpiryDate", cert.expiry_date.replace("-", "/"))
        seal = _sub(root, "Seal", _b64(cert.seal))
        seal.set("keyId", cert.seal_key_id)
        seal.set("algorithm", cert.seal_algorithm)
        kinds = _field_kinds(cert)
        if cert.fields:
            items = ET.SubElement(root, "Items")
            for name in sorted(cert.fields):
                _sub(items, _pascal(name), str(self.field_value(kinds[name], cert.fields[name])))
        if cert.attachments:
            files = ET.SubElement(root, "Files")
            for a in cert.attachments:
                element = ET.SubElement(files, "File")
                _sub(element, "FileName", a.name)
                _sub(element, "MediaType", a.media_type)
                _sub(element, "Size", str(a.size_bytes))
                _sub(element, "Digest", a.sha256.hex())
        return root

    def answer(self, outcome: str, cert: certificate_pb2.Certificate | None) -> bytes:
        root = ET.Element("CertResult", code=self.outcomes[outcome])
        _sub(root, "Message", _OUTCOME_TEXT[outcome])
        if cert is not None:
            self.certificate(root, cert)
        return _xml(root)

    def error(self, message: str) -> bytes:
        root = ET.Element("Error")
        _sub(root, "Message", message)
        return _xml(root)


_OUTCOME_TEXT = {
    FOUND: "成功",
    NOT_FOUND: "未查询到证照",
    CONSENT_MISSING: "未查询到授权",
    CONSENT_EXPIRED: "授权已过期",
    CONSENT_OTHER_HOLDER: "授权与持证人不符",
    CONSENT_OTHER_PROVINCE: "授权与请求地区不符",
}


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


DIALECTS: dict[str, Callable[[], _Dialect]] = {
    "310000": _Shanghai,
    "320000": _Jiangsu,
    "330000": _Zhejiang,
    "340000": _Anhui,
}


# ---- The library's certificates -------------------------------------------------------


@dataclass(frozen=True)
class Organisation:
    """A synthetic organisation registered in the province."""

    credit_code: str
    name: str
    region: str
    legal_representative: str


def credit_code(registration: str, region: str, rng: random.Random) -> str:
    """A valid GB 32100 unified social credit code (organisation code part random digits)."""
    first17 = f"{registration}{region}{rng.randrange(10**9):09d}"
    return first17 + str(uscc.calc_check_digit(first17))


def synthetic_organisations(
    province: str, seed: int = 0, count: int = 8
) -> tuple[Organisation, ...]:
    """``count`` companies registered in ``province``, deterministic from ``seed``."""
    rng = random.Random(f"org:{province}:{seed}")
    counties = sorted(COUNTIES[province])
    residents = synthetic_residents(province, seed)
    place = _PROVINCE_NAMES[province][:2]
    result = []
    for n in range(count):
        region = counties[n % len(counties)]
        name = f"{place}{rng.choice(_COMPANY_WORDS)}{rng.choice(_COMPANY_TRADES)}有限公司"
        result.append(
            Organisation(
                credit_code=credit_code("91", region, rng),
                name=f"{name[:-4]}{n + 1}号有限公司" if n else name,
                region=region,
                legal_representative=residents[(n * 3) % len(residents)].full_name,
            )
        )
    return tuple(result)


class _Issuer:
    """Builds and seals the province's certificates."""

    def __init__(self, province: str, seed: int, today: date, key_path: Path, key_id: str) -> None:
        self.province = province
        self.today = today
        self.rng = random.Random(f"certificates:{province}:{seed}")
        self._key = load_private_key(key_path)
        self._key_id = key_id
        name = _PROVINCE_NAMES[province]
        self.authorities: dict[str, tuple[str, str]] = {}
        for suffix, categories in _AUTHORITIES.values():
            code = credit_code("11", province, self.rng)
            for category in categories:
                self.authorities[category] = (code, f"{name}{suffix}")
        self.serial = 0

    def issue(
        self,
        category: str,
        holder: common_pb2.Party,
        fields: dict[str, str],
        *,
        issued: date | None = None,
        expiry: date | None = None,
        pages: int = 0,
    ) -> certificate_pb2.Certificate:
        self.serial += 1
        issuer_code, issuer_name = self.authorities[category]
        if issued is None:
            issued = self.today - timedelta(days=self.rng.randrange(60, 3650))
        if expiry is None and category in _VALIDITY_YEARS:
            expiry = _add_years(issued, _VALIDITY_YEARS[category])
            if expiry <= self.today:  # keep ordinary certificates valid
                issued = self.today - timedelta(days=self.rng.randrange(30, 300))
                expiry = _add_years(issued, _VALIDITY_YEARS[category])
        serial = f"{self.province[:2]}{self.serial:08d}"
        cert = certificate_pb2.Certificate(
            category_code=category,
            certificate_number=f"{self.province[:2]}{category[:4]}{issued:%Y}{self.serial:06d}",
            licence_id=licence_id(category, issuer_code, serial, 1),
            issuer_credit_code=issuer_code,
            issuer_name=issuer_name,
            issuer_province=self.province,
            issue_date=issued.isoformat(),
            expiry_date=expiry.isoformat() if expiry else "",
        )
        cert.holder.CopyFrom(holder)
        for name, value in fields.items():
            if value:
                cert.fields[name] = value
        for page in range(1, pages + 1):
            digest = hashlib.sha256(f"{cert.licence_id}:page:{page}".encode()).digest()
            cert.attachments.add(
                name=f"第{page}页.pdf",
                media_type="application/pdf",
                size_bytes=self.rng.randrange(40_000, 900_000),
                sha256=digest,
            )
        return seal_certificate(cert, self._key, self._key_id)


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _person(resident: Resident) -> common_pb2.Party:
    return common_pb2.Party(
        person=common_pb2.Person(id_number=resident.id_number, full_name=resident.full_name)
    )


def _gender_word(resident: Resident) -> str:
    return "男" if resident.gender == "GENDER_MALE" else "女"


@dataclass
class _Library:
    certificates: list[certificate_pb2.Certificate]
    forged: list[certificate_pb2.Certificate]
    expired: list[certificate_pb2.Certificate]


# The steps below draw from the issuer's one random generator, so their order is
# part of the data: tests/adapters/test_certificate_library.py pins the result.


def synthetic_certificates(
    province: str, key_path: Path, key_id: str, *, seed: int = 0, today: date
) -> _Library:
    """The library's certificates (see the module docstring), sealed with the key.

    Made once per process for the same inputs (the seal key's bytes included) and
    handed out as a deep copy: each library owns and may change its certificates."""
    made = _made_certificates(province, key_path, key_path.read_bytes(), key_id, seed, today)
    return copy.deepcopy(made)


@functools.lru_cache(maxsize=32)
def _made_certificates(
    province: str, key_path: Path, _key: bytes, key_id: str, seed: int, today: date
) -> _Library:
    issuer = _Issuer(province, seed, today, key_path, key_id)
    residents = synthetic_residents(province, seed)
    certs: list[certificate_pb2.Certificate] = []
    for n, resident in enumerate(residents, 1):
        certs += _resident_certificates(issuer, _Subject(n, resident, residents, issuer))
    certs += _marriage_certificates(issuer, residents)
    certs += _residence_permits(issuer, seed)
    organisations = synthetic_organisations(province, seed)
    for n, org in enumerate(organisations):
        certs += _organisation_certificates(issuer, n, org)
    expired = _expire(issuer, certs, residents[0], organisations[1])
    forged = _forge(certs, residents[2], organisations[2])
    return _Library(certs, forged, expired)


class _Subject:
    """The ``n``-th resident (from 1) as the holder of the certificates issued to them."""

    def __init__(
        self, n: int, resident: Resident, residents: tuple[Resident, ...], issuer: _Issuer
    ) -> None:
        self.n = n
        self.resident = resident
        self.residents = residents
        self.holder = _person(resident)
        self.born = resident.birth_date.year
        #: The street of their property and lease, drawn before their first certificate.
        self.street = issuer.rng.choice(_STREETS)


_Step = Callable[[_Issuer, _Subject], certificate_pb2.Certificate]


def _resident_certificates(issuer: _Issuer, s: _Subject) -> list[certificate_pb2.Certificate]:
    """A resident's certificates, in the order of :data:`_RESIDENT_STEPS`."""
    return [step(issuer, s) for who, step in _RESIDENT_STEPS if who(s)]


def _identity_card(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r = s.resident
    fields = {
        "full_name": r.full_name,
        "gender": _gender_word(r),
        "ethnicity": r.ethnicity,
        "birth_date": r.birth_date.isoformat(),
        "address": r.address,
    }
    return issuer.issue("10100000", s.holder, fields)


def _household_register(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r = s.resident
    fields = {
        "household_number": f"{issuer.rng.randrange(10**8):08d}",
        "household_head_name": r.full_name,
        "relation_to_head": "户主",
        "address": r.address,
        "registered_region": r.registered_region,
    }
    return issuer.issue("10200000", s.holder, fields)


def _social_security_card(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r = s.resident
    fields = {
        "card_number": f"{issuer.province[:2]}{issuer.rng.randrange(10**9):09d}",
        "social_security_number": r.id_number,
        "issuing_region": r.registered_region,
    }
    return issuer.issue("16100000", s.holder, fields)


def _graduation_certificate(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r, rng = s.resident, issuer.rng
    graduated = date(r.birth_date.year + 22, 6, 30)
    fields = {
        "school_name": rng.choice(_SCHOOLS),
        "major": rng.choice(_MAJORS),
        "education_level": "本科",
        "enrolment_date": date(r.birth_date.year + 18, 9, 1).isoformat(),
        "graduation_date": graduated.isoformat(),
    }
    return issuer.issue("12100000", s.holder, fields, issued=graduated, pages=1)


def _degree_certificate(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r, rng = s.resident, issuer.rng
    awarded = date(r.birth_date.year + 22, 7, 1)
    fields = {
        "school_name": rng.choice(_SCHOOLS),
        "degree_name": "学士",
        "major": rng.choice(_MAJORS),
        "award_date": awarded.isoformat(),
    }
    return issuer.issue("12200000", s.holder, fields, issued=awarded)


def _real_estate_certificate(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r, rng = s.resident, issuer.rng
    fields = {
        "property_address": f"{r.address[:-4]}{s.street}{rng.randrange(1, 300)}弄"
        f"{rng.randrange(1, 30)}号{rng.randrange(101, 2800)}室",
        "property_unit_number": f"{r.registered_region}{rng.randrange(10**12):012d}"
        f"F{rng.randrange(10**8):08d}",
        "area_m2": f"{rng.randrange(40, 200)}.{rng.randrange(100):02d}",
        "usage": "住宅",
        "right_type": "国有建设用地使用权/房屋所有权",
        "land_use_term_end": date(2080 + s.n % 10, 12, 31).isoformat(),
    }
    return issuer.issue("13100000", s.holder, fields, pages=2)


def _driving_licence(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    rng, today = issuer.rng, issuer.today
    first = today - timedelta(days=rng.randrange(400, 5000))
    valid_from = today - timedelta(days=rng.randrange(30, 300))
    fields = {
        "full_name": s.resident.full_name,
        "licence_class": rng.choice(("C1", "C2", "A2", "B1")),
        "first_issue_date": first.isoformat(),
        "valid_from": valid_from.isoformat(),
        "valid_until": _add_years(valid_from, 6).isoformat(),
    }
    return issuer.issue(
        "15100000", s.holder, fields, issued=valid_from, expiry=_add_years(valid_from, 6)
    )


def _vehicle_registration(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    rng, province = issuer.rng, issuer.province
    fields = {
        "plate_number": f"{'沪苏浙皖'[list(_PROVINCE_NAMES).index(province)]}"
        f"{'ABCDE'[s.n % 5]}{rng.randrange(10**5):05d}",
        "vehicle_type": "小型普通客车",
        "vin": f"LSV{rng.randrange(10**14):014d}",
        "registration_date": (issuer.today - timedelta(days=rng.randrange(100, 3000))).isoformat(),
    }
    return issuer.issue("15200000", s.holder, fields)


def _birth_certificate(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r = s.resident
    fields = {
        "child_name": r.full_name,
        "child_gender": _gender_word(r),
        "birth_date": r.birth_date.isoformat(),
        "birth_place": f"{_PROVINCE_NAMES[issuer.province]}第一人民医院",
        "mother_name": "母" + r.full_name[1:],
    }
    return issuer.issue("11200000", s.holder, fields, issued=r.birth_date + timedelta(days=3))


def _social_insurance(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r = s.resident
    fields = {
        "insurance_type": "城镇职工基本养老保险",
        "insured_region": r.registered_region,
        "start_date": date(max(r.birth_date.year + 22, 2000), 7, 1).isoformat(),
        "contribution_months": str(issuer.rng.randrange(1, 360)),
    }
    return issuer.issue("16200000", s.holder, fields)


def _provident_fund(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r, rng, province = s.resident, issuer.rng, issuer.province
    fields = {
        "fund_account": f"{province[:2]}{rng.randrange(10**10):010d}",
        "employer_name": f"{_PROVINCE_NAMES[province]}某某有限公司",
        "monthly_deposit_fen": str(rng.randrange(50_000, 800_000)),
        "start_date": date(max(r.birth_date.year + 22, 2000), 3, 1).isoformat(),
    }
    return issuer.issue("16300000", s.holder, fields)


def _teacher_qualification(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    fields = {"qualification_type": "高级中学教师资格", "subject": "数学"}
    return issuer.issue("12300000", s.holder, fields)


def _skill_certificate(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    return issuer.issue("12400000", s.holder, {"occupation": "电工", "skill_level": "三级/高级工"})


def _lease_registration(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    r, rng = s.resident, issuer.rng
    start = issuer.today - timedelta(days=rng.randrange(10, 300))
    fields = {
        "property_address": f"{r.address[:-4]}{s.street}{rng.randrange(1, 300)}号",
        "area_m2": f"{rng.randrange(20, 90)}.{rng.randrange(100):02d}",
        "lessor_name": s.residents[(s.n + 5) % len(s.residents)].full_name,
        "lease_start": start.isoformat(),
        "lease_end": _add_years(start, 1).isoformat(),
    }
    return issuer.issue("13200000", s.holder, fields, issued=start)


def _disability_certificate(issuer: _Issuer, s: _Subject) -> certificate_pb2.Certificate:
    fields = {"disability_category": "肢体残疾", "disability_level": "三级"}
    return issuer.issue("16400000", s.holder, fields)


#: Who gets which certificate, in the order they are issued.
_RESIDENT_STEPS: tuple[tuple[Callable[[_Subject], bool], _Step], ...] = (
    (lambda s: True, _identity_card),
    (lambda s: True, _household_register),
    (lambda s: True, _social_security_card),
    (lambda s: s.n % 2 == 0 and s.born < 2003, _graduation_certificate),
    (lambda s: s.n % 4 == 0 and s.born < 2003, _degree_certificate),
    (lambda s: s.n % 3 == 0, _real_estate_certificate),
    (lambda s: s.n % 2 == 1 and s.born < 2006, _driving_licence),
    (lambda s: s.n % 4 == 3, _vehicle_registration),
    (lambda s: s.born >= 1996, _birth_certificate),
    (lambda s: s.n % 3 == 1, _social_insurance),
    (lambda s: s.n % 4 == 1, _provident_fund),
    (lambda s: s.n % 7 == 0, _teacher_qualification),
    (lambda s: s.n % 6 == 0, _skill_certificate),
    (lambda s: s.n % 8 == 3, _lease_registration),
    (lambda s: s.n == 13, _disability_certificate),
)


def _marriage_certificates(
    issuer: _Issuer, residents: tuple[Resident, ...]
) -> list[certificate_pb2.Certificate]:
    """Marriages: residents 1&2, 9&10, 17&18 (odd ones male, even female); a divorce 25&26.

    Each spouse holds a copy.
    """
    certs = []
    couples = [(i, i + 1, "11100000") for i in range(0, 24, 8)] + [(24, 25, "11100100")]
    for a, b, category in couples:
        ra, rb = residents[a], residents[b]
        registered = max(ra.birth_date, rb.birth_date) + timedelta(days=365 * 23)
        if registered > issuer.today:
            registered = issuer.today - timedelta(days=100)
        fields = {
            "spouse_a_id": ra.id_number,
            "spouse_a_name": ra.full_name,
            "spouse_b_id": rb.id_number,
            "spouse_b_name": rb.full_name,
            "registration_date": registered.isoformat(),
            "registration_authority": f"{COUNTIES[issuer.province][ra.registered_region]}民政局",
        }
        for r in (ra, rb):
            certs.append(issuer.issue(category, _person(r), fields, issued=registered, pages=1))
    return certs


def _residence_permits(issuer: _Issuer, seed: int) -> list[certificate_pb2.Certificate]:
    """Residence permits for every tenth resident of each other province, living here."""
    province, rng, today = issuer.province, issuer.rng, issuer.today
    county = sorted(COUNTIES[province])[0]
    certs = []
    for other in sorted(COUNTIES):
        if other == province:
            continue
        for r in synthetic_residents(other, seed)[::10]:
            valid_from = today - timedelta(days=rng.randrange(10, 200))
            fields = {
                "full_name": r.full_name,
                "address": f"{COUNTIES[province][county]}{rng.choice(_STREETS)}"
                f"{rng.randrange(1, 999)}号",
                "residence_region": county,
                "valid_from": valid_from.isoformat(),
                "valid_until": _add_years(valid_from, 1).isoformat(),
            }
            certs.append(
                issuer.issue(
                    "10300000",
                    _person(r),
                    fields,
                    issued=valid_from,
                    expiry=_add_years(valid_from, 1),
                )
            )
    return certs


def _organisation_certificates(
    issuer: _Issuer, n: int, org: Organisation
) -> list[certificate_pb2.Certificate]:
    """The ``n``-th organisation's (from 0) business licence, and every second one a food permit."""
    rng, addresses = issuer.rng, COUNTIES[issuer.province]
    holder = common_pb2.Party(
        organisation=common_pb2.Organisation(
            credit_code=org.credit_code, name=org.name, region=org.region
        )
    )
    established = issuer.today - timedelta(days=rng.randrange(200, 7000))
    licence = {
        "company_name": org.name,
        "company_type": "有限责任公司(自然人投资或控股)",
        "legal_representative": org.legal_representative,
        "registered_capital_fen": str(rng.randrange(1, 5000) * 1_000_000),
        "establishment_date": established.isoformat(),
        "business_scope": "技术开发、技术咨询；货物进出口",
        "registered_address": f"{addresses[org.region]}"
        f"{rng.choice(_STREETS)}{rng.randrange(1, 999)}号",
    }
    certs = [issuer.issue("14100000", holder, licence, issued=established, pages=1)]
    if n % 2 == 1:
        permit = {
            "company_name": org.name,
            "legal_representative": org.legal_representative,
            "business_address": f"{addresses[org.region]}"
            f"{rng.choice(_STREETS)}{rng.randrange(1, 999)}号",
            "business_items": "预包装食品销售；热食类食品制售",
        }
        certs.append(issuer.issue("14200000", holder, permit))
    return certs


def _expire(
    issuer: _Issuer,
    certs: list[certificate_pb2.Certificate],
    driver: Resident,
    restaurant: Organisation,
) -> list[certificate_pb2.Certificate]:
    """Reissue, as expired 40 days ago, the driver's licence and the restaurant's food permit.

    They replace the valid ones in ``certs`` (sealed as issued); returns them.
    """
    today = issuer.today
    expired = []
    for i, cert in enumerate(certs):
        if (
            cert.category_code == "15100000" and cert.holder.person.id_number == driver.id_number
        ) or (
            cert.category_code == "14200000"
            and cert.holder.organisation.credit_code == restaurant.credit_code
        ):
            issued = _add_years(today, -6) - timedelta(days=40)
            ended = today - timedelta(days=40)
            fields = dict(cert.fields)
            if "valid_until" in fields:
                fields["valid_from"] = issued.isoformat()
                fields["valid_until"] = ended.isoformat()
            certs[i] = issuer.issue(
                cert.category_code, cert.holder, fields, issued=issued, expiry=ended
            )
            expired.append(certs[i])
    return expired


def _forge(
    certs: list[certificate_pb2.Certificate], owner: Resident, company: Organisation
) -> list[certificate_pb2.Certificate]:
    """Forge, in place, the owner's real-estate certificate (seal bytes corrupted) and the
    company's business licence (altered after sealing); returns them."""
    forged = []
    for cert in certs:
        if cert.category_code == "13100000" and cert.holder.person.id_number == owner.id_number:
            cert.seal = bytes([cert.seal[0] ^ 0x01]) + cert.seal[1:]
            forged.append(cert)
        elif (
            cert.category_code == "14100000"
            and cert.holder.organisation.credit_code == company.credit_code
        ):
            cert.fields["registered_capital_fen"] = "99900000000"
            forged.append(cert)
    return forged


# ---- The simulator -------------------------------------------------------------------


def _holder_id(cert: certificate_pb2.Certificate) -> str:
    if cert.holder.WhichOneof("party") == "organisation":
        return cert.holder.organisation.credit_code
    return cert.holder.person.id_number


_PROVINCE = re.compile(r"[1-9][0-9]{5}")


class CertificateLibrarySimulator(SimulatorServer):
    """A province's e-certificate library on loopback, with synthetic sealed certificates.

    ``seal_key_path`` is the PEM Ed25519 private key of the province's issuing
    authorities (dev keys: ``province_configs/<code>/keys/seal.key.pem``),
    ``seal_key_id`` its key id (``"<code>-seal-2026"``). ``clock`` decides
    consent and certificate expiry. State lives in the object and survives
    :meth:`stop` / :meth:`start`.
    """

    def __init__(
        self,
        province: str,
        seal_key_path: Path | str,
        seal_key_id: str,
        *,
        seed: int = 0,
        clock: Clock | None = None,
    ) -> None:
        if province not in DIALECTS:
            raise ValueError(f"no simulated certificate library for province {province!r}")
        super().__init__()
        self.province = province
        self.seal_key_id = seal_key_id
        self._clock: Clock = clock or SystemClock()
        self._dialect = DIALECTS[province]()
        today = self._clock.now().astimezone(_CST).date()
        library = synthetic_certificates(
            province, Path(seal_key_path), seal_key_id, seed=seed, today=today
        )
        #: Every certificate in the library (canonical, sealed), forged and expired included.
        self.certificates: list[certificate_pb2.Certificate] = library.certificates
        #: The forged ones (seal does not verify).
        self.forged: list[certificate_pb2.Certificate] = library.forged
        #: The expired ones (sealed, expiry date in the past).
        self.expired: list[certificate_pb2.Certificate] = library.expired
        #: Consents by reference.
        self.consents: dict[str, Consent] = {}
        self._seed_consents()

    @property
    def fetch_path(self) -> str:
        return self._dialect.fetch_path

    def local_code(self, national: str) -> str:
        """The library's own code for a national category."""
        return self._dialect.categories[national]

    def holder_id(self, cert: certificate_pb2.Certificate) -> str:
        return _holder_id(cert)

    def find(
        self, category_code: str, holder_id: str, certificate_number: str = ""
    ) -> certificate_pb2.Certificate | None:
        """The holder's certificate of a category (the latest issued, or the one numbered)."""
        matches = [
            c
            for c in self.certificates
            if c.category_code == category_code
            and _holder_id(c) == holder_id
            and (not certificate_number or c.certificate_number == certificate_number)
        ]
        return max(matches, key=lambda c: c.issue_date) if matches else None

    def add_consent(
        self,
        holder_id: str,
        requesting_province: str,
        expires_at: datetime,
        purpose: str = "",
    ) -> str:
        """Record a consent; its reference (``CONSENT-<province>-NNNN``)."""
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        if not _PROVINCE.fullmatch(requesting_province):
            raise ValueError("requesting_province must be a six-digit GB/T 2260 code")
        reference = f"CONSENT-{self.province}-{len(self.consents) + 1:04d}"
        self.consents[reference] = Consent(
            reference, holder_id, requesting_province, expires_at.astimezone(UTC), purpose
        )
        return reference

    def _seed_consents(self) -> None:
        now = self._clock.now()
        holders = [_holder_id(c) for c in self.certificates if c.category_code == "10100000"][:4]
        for holder in holders:
            for other in sorted(DIALECTS):
                if other != self.province:
                    self.add_consent(holder, other, now + timedelta(days=365), "婚姻登记")
        self.add_consent(
            holders[0],
            sorted(set(DIALECTS) - {self.province})[0],
            now - timedelta(days=1),
            "已过期",
        )

    def consent_outcome(self, query: FetchQuery) -> str | None:
        """Why the consent does not cover ``query`` (an outcome), or None when it does."""
        consent = self.consents.get(query.consent_reference)
        if consent is None:
            return CONSENT_MISSING
        if consent.holder_id != query.holder_id:
            return CONSENT_OTHER_HOLDER
        if consent.requesting_province != query.requesting_province:
            return CONSENT_OTHER_PROVINCE
        if consent.expires_at <= self._clock.now():
            return CONSENT_EXPIRED
        return None

    def fetch(self, query: FetchQuery) -> tuple[str, certificate_pb2.Certificate | None]:
        """The library's decision on a fetch: (outcome, certificate when FOUND)."""
        refused = self.consent_outcome(query)
        if refused is not None:
            return refused, None
        cert = self.find(query.category_code, query.holder_id, query.certificate_number)
        return (FOUND, cert) if cert is not None else (NOT_FOUND, None)

    # ---- HTTP (start / stop / url / ``async with``: :class:`SimulatorServer`) ---------
    # Certificates and consents are kept across stop / start.

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(self._dialect.fetch_path, self._native_fetch)
        router.add_get("/admin/certificates", self._admin_certificates)
        router.add_get("/admin/consents", self._admin_consents)
        router.add_post("/admin/consents", self._admin_add_consent)

    def _native_media(self) -> str:
        return self._dialect.content_type

    async def _native_fetch(self, request: web.Request) -> web.Response:
        try:
            query = self._dialect.parse_request(await request.read())
        except BadNativeRequest as exc:
            return self._native(self._dialect.error(str(exc)), 400)
        outcome, cert = self.fetch(query)
        return self._native(self._dialect.answer(outcome, cert))

    async def _admin_certificates(self, request: web.Request) -> web.Response:
        wanted = request.query.get("holder_id")
        today = self._clock.now().astimezone(_CST).date().isoformat()
        forged = {c.licence_id for c in self.forged}
        return web.json_response(
            [
                {
                    "category_code": c.category_code,
                    "local_category_code": self.local_code(c.category_code),
                    "certificate_number": c.certificate_number,
                    "licence_id": c.licence_id,
                    "holder_id": _holder_id(c),
                    "holder_kind": c.holder.WhichOneof("party"),
                    "issue_date": c.issue_date,
                    "expiry_date": c.expiry_date,
                    "forged": c.licence_id in forged,
                    "expired": bool(c.expiry_date) and c.expiry_date < today,
                }
                for c in self.certificates
                if wanted is None or _holder_id(c) == wanted
            ]
        )

    async def _admin_consents(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "reference": c.reference,
                    "holder_id": c.holder_id,
                    "requesting_province": c.requesting_province,
                    "purpose": c.purpose,
                    "expires_at": c.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
                for c in self.consents.values()
            ]
        )

    async def _admin_add_consent(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        if body is None:
            return not_an_object()
        holder_id, province = body.get("holder_id"), body.get("requesting_province")
        expires, purpose = body.get("expires_at"), body.get("purpose", "")
        if not isinstance(holder_id, str) or not holder_id:
            return json_error(400, "holder_id must be a non-empty string")
        if not isinstance(province, str) or not _PROVINCE.fullmatch(province):
            return json_error(400, "requesting_province must be a six-digit GB/T 2260 code")
        if not isinstance(purpose, str):
            return json_error(400, "purpose must be a string")
        try:
            expires_at = datetime.fromisoformat(expires) if isinstance(expires, str) else None
        except ValueError:
            expires_at = None
        if expires_at is None or expires_at.tzinfo is None:
            return json_error(400, "expires_at must be an RFC 3339 instant with an offset")
        reference = self.add_consent(holder_id, province, expires_at, purpose)
        return web.json_response({"reference": reference}, status=201)
