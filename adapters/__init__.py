"""Adapters: canonical ⇄ native translation, back-end connectors and simulators.

The gateway uses this package through a few names:

- :class:`AdapterConfig` — the validated ``[adapter]`` table of a province config;
- :class:`Translator` — that config compiled: native documents ⇄ canonical dicts;
- :class:`IdentityAuthority` / :class:`CredentialCheck` — the e-ID back-end
  contract, and :func:`build_identity_authority` to get one for a province;
- :class:`FundCentre` — the provident fund centre contract, and
  :func:`build_fund_centre` to get one for a province;
- the errors of :mod:`adapters.errors`.
"""

from __future__ import annotations

from adapters.base import CredentialCheck, FundCentre, IdentityAuthority
from adapters.errors import (
    AdapterError,
    BackendRejected,
    BackendUnavailable,
    TranslationError,
    WithdrawalNotFound,
)
from adapters.fund import HttpFundCentre
from adapters.identity import HttpIdentityAuthority
from adapters.mapping import Translator, from_message, to_message
from adapters.spec import AdapterConfig
from gateway.clock import Clock

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "BackendRejected",
    "BackendUnavailable",
    "CredentialCheck",
    "FundCentre",
    "HttpFundCentre",
    "HttpIdentityAuthority",
    "IdentityAuthority",
    "TranslationError",
    "Translator",
    "WithdrawalNotFound",
    "build_fund_centre",
    "build_identity_authority",
    "from_message",
    "to_message",
]


def build_identity_authority(
    adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
) -> IdentityAuthority:
    """The connector to a province's e-ID authority at ``base_url``.

    Today every province is served by the declarative HTTP connector; a
    province that needs code would be chosen here by a key of its config.
    """
    return HttpIdentityAuthority(adapter, base_url, clock=clock)


def build_fund_centre(
    adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
) -> FundCentre:
    """The connector to a province's provident fund centre at ``base_url``.

    Raises ``ValueError`` when the province's adapter has no ``[adapter.fund]``
    section: such a province cannot serve fund requests.
    """
    return HttpFundCentre(adapter, base_url, clock=clock)
