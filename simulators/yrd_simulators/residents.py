"""Synthetic residents for the back-end simulators.

Deterministic from (province, seed), so a test or demo can rely on the same
people each run. Every ID number of a shipped province is valid under GB 11643
as checked by ``stdnum.cn.ric.validate`` — which also requires the county code
to have existed on the birth date, so residents of counties created in the
1980s are born after that (the generator redraws until the number validates).

Any other province-level code (a region being added, known only by its
config) gets four synthetic counties, ``<xx>0102``, ``<xx>0104``, ``<xx>0105``
and ``<xx>0202``; their numbers have a valid structure, birth date and check
character (stdnum's county table does not know them, so it is not asked).

None of these people exist; names are drawn from common surnames and given
names, photos are a few bytes framed like a JPEG.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from datetime import date, timedelta

from stdnum.cn import ric

from gateway.core.identifiers import make_id_number

#: County-level GB/T 2260 codes per province, with the address prefix.
COUNTIES: dict[str, dict[str, str]] = {
    "310000": {
        "310101": "上海市黄浦区",
        "310104": "上海市徐汇区",
        "310105": "上海市长宁区",
        "310115": "上海市浦东新区",
    },
    "320000": {
        "320102": "江苏省南京市玄武区",
        "320106": "江苏省南京市鼓楼区",
        "320505": "江苏省苏州市虎丘区",
        "320111": "江苏省南京市浦口区",
    },
    "330000": {
        "330102": "浙江省杭州市上城区",
        "330106": "浙江省杭州市西湖区",
        "330212": "浙江省宁波市鄞州区",
        "330122": "浙江省杭州市桐庐县",
    },
    "340000": {
        "340102": "安徽省合肥市瑶海区",
        "340104": "安徽省合肥市蜀山区",
        "340202": "安徽省芜湖市镜湖区",
        "340121": "安徽省合肥市长丰县",
    },
}

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余"
    "于杜叶程魏苏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦方白邹孟熊秦邱江尹薛闫段雷侯龙"
    "史陶黎贺顾毛郝龚邵万钱严"
)
_GIVEN_MALE = "伟强磊军勇杰涛明超刚平辉鹏华飞鑫波宇浩凯健俊帆帅旭宁龙林欢阳建国志"
_GIVEN_FEMALE = "芳娜敏静丽艳娟霞秀英慧巧美婷雪琳晶燕玲桂红梅莉兰凤洁琴云萍颖倩"
_STREETS = ("人民路", "解放路", "中山路", "建设路", "和平街", "文化路", "新华路", "长江路")
_ETHNIC_MINORITIES = ("02", "03", "04", "05", "08", "09", "15")

#: Which residents (1-based sequence within the province) are not active.
_INITIAL_STATES = {
    5: "CREDENTIAL_REVOKED",
    6: "CREDENTIAL_LOST",
    7: "CREDENTIAL_SUSPENDED",
    23: "CREDENTIAL_REVOKED",
    31: "CREDENTIAL_LOST",
}

BIRTH_FIRST = date(1950, 1, 1)
BIRTH_LAST = date(2005, 12, 31)


@dataclass(frozen=True)
class Resident:
    """One synthetic resident and their e-ID credential (canonical values)."""

    credential_id: str
    id_number: str
    full_name: str
    gender: str  # canonical Gender name: GENDER_MALE / GENDER_FEMALE
    birth_date: date
    ethnicity: str  # GB/T 3304 two-digit code
    address: str
    registered_region: str  # GB/T 2260 county code
    nationality: str
    photo: bytes
    state: str  # canonical CredentialState name


def counties_of(province: str) -> dict[str, str]:
    """County codes of ``province`` with their address prefix (synthetic if not shipped)."""
    if province in COUNTIES:
        return COUNTIES[province]
    if len(province) != 6 or not province.isascii() or not province.isdigit():
        raise ValueError(f"expected a six-digit province-level code, got {province!r}")
    if not province.endswith("0000") or province[0] == "0":
        raise ValueError(f"expected a province-level code ending in 0000, got {province!r}")
    prefix = province[:2]
    return {
        f"{prefix}0102": f"合成省({province})甲区",
        f"{prefix}0104": f"合成省({province})乙区",
        f"{prefix}0105": f"合成省({province})丙区",
        f"{prefix}0202": f"合成省({province})丁县",
    }


@functools.lru_cache(maxsize=64)
def synthetic_residents(province: str, seed: int = 0, count: int = 40) -> tuple[Resident, ...]:
    """``count`` residents of ``province``, deterministic from ``seed`` (frozen
    records, so made once per process: the ID-number checks are slow and every
    simulator of a federation asks for them)."""
    counties = counties_of(province)
    # stdnum knows the counties of the shipped provinces only (see the module docstring).
    validate = ric.is_valid if province in COUNTIES else lambda _number: True
    rng = random.Random(f"{province}:{seed}")
    span = (BIRTH_LAST - BIRTH_FIRST).days
    residents = []
    for n in range(1, count + 1):
        male = n % 2 == 1  # alternate, so both genders are always present
        while True:
            region = rng.choice(sorted(counties))
            birth = BIRTH_FIRST + timedelta(days=rng.randrange(span + 1))
            # The sequence's parity is the gender (GB 11643): odd male, even female.
            sequence = rng.randrange(0, 500) * 2 + (1 if male else 0)
            number = make_id_number(region, birth, sequence)
            if validate(number):
                break
        given = _GIVEN_MALE if male else _GIVEN_FEMALE
        name = rng.choice(_SURNAMES) + "".join(rng.choice(given) for _ in range(rng.choice((1, 2))))
        residents.append(
            Resident(
                credential_id=f"EID{province}{n:06d}",
                id_number=number,
                full_name=name,
                gender="GENDER_MALE" if male else "GENDER_FEMALE",
                birth_date=birth,
                ethnicity=rng.choice(_ETHNIC_MINORITIES) if rng.random() < 0.15 else "01",
                address=f"{counties[region]}{rng.choice(_STREETS)}{rng.randrange(1, 999)}号",
                registered_region=region,
                nationality="CHN",
                photo=b"\xff\xd8\xff\xe0" + rng.randbytes(8) + b"\xff\xd9",
                state=_INITIAL_STATES.get(n, "CREDENTIAL_ACTIVE"),
            )
        )
    return tuple(residents)
