"""Adapters: canonical ⇄ native translation, back-end connectors and simulators.

The gateway uses this package through a few names:

- :class:`AdapterConfig` — the validated ``[adapter]`` table of a province config;
- :class:`Translator` — that config compiled: native documents ⇄ canonical dicts;
- :class:`IdentityAuthority` / :class:`CredentialCheck` — the e-ID back-end
  contract, and :func:`build_identity_authority` to get one for a province;
- :class:`FundCentre` — the provident fund centre contract, and
  :func:`build_fund_centre` to get one for a province;
- :class:`CertificateLibrary` — the e-certificate library contract, and
  :func:`build_certificate_library`; seals, licence ids and the native
  certificate codec in :mod:`adapters.certificate`, the category catalogue
  in :mod:`adapters.catalogue`;
- :class:`CaseSystem` — the inter-provincial case system contract, and
  :func:`build_case_system` (service catalogue and limits in :mod:`adapters.case`);
- :class:`AdapterPlugin` — the contract of Python plug-ins for what a
  declarative mapping cannot express (:mod:`adapters.plugins`);
- the errors of :mod:`adapters.errors`.
"""

from __future__ import annotations

from adapters.base import (
    AdapterPlugin,
    CaseSystem,
    CertificateLibrary,
    CredentialCheck,
    FundCentre,
    IdentityAuthority,
)
from adapters.case import HttpCaseSystem
from adapters.certificate import HttpCertificateLibrary
from adapters.errors import (
    AdapterError,
    BackendRejected,
    BackendUnavailable,
    CaseNotFound,
    CertificateNotFound,
    ConsentRefused,
    PluginError,
    TranslationError,
    WithdrawalNotFound,
)
from adapters.fund import HttpFundCentre
from adapters.identity import HttpIdentityAuthority
from adapters.mapping import Translator, from_message, to_message
from adapters.plugins import resolve
from adapters.spec import AdapterConfig
from gateway.core.clock import Clock, SystemClock

__all__ = [
    "AdapterConfig",
    "AdapterError",
    "AdapterPlugin",
    "BackendRejected",
    "BackendUnavailable",
    "CaseNotFound",
    "CaseSystem",
    "CertificateLibrary",
    "CertificateNotFound",
    "ConsentRefused",
    "CredentialCheck",
    "FundCentre",
    "HttpCaseSystem",
    "HttpCertificateLibrary",
    "HttpFundCentre",
    "HttpIdentityAuthority",
    "IdentityAuthority",
    "PluginError",
    "TranslationError",
    "Translator",
    "WithdrawalNotFound",
    "build_case_system",
    "build_certificate_library",
    "build_fund_centre",
    "build_identity_authority",
    "from_message",
    "to_message",
]


def build_identity_authority(
    adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
) -> IdentityAuthority:
    """The connector to a province's e-ID authority at ``base_url``.

    The declarative HTTP connector, unless the province's ``[adapter.plugin]``
    builds its own. Raises ``PluginError`` when the plug-in cannot be loaded
    (config validation has reported that already).
    """
    if adapter.plugin is not None:
        built = resolve(adapter.plugin).identity_authority(
            adapter, base_url, clock=clock or SystemClock()
        )
        if built is not None:
            return built
    return HttpIdentityAuthority(adapter, base_url, clock=clock)


def build_fund_centre(
    adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
) -> FundCentre:
    """The connector to a province's provident fund centre at ``base_url``.

    The declarative HTTP connector, unless the province's ``[adapter.plugin]``
    builds its own. Raises ``ValueError`` when the province's adapter has no
    ``[adapter.fund]`` section (and no plug-in serves it): such a province
    cannot serve fund requests.
    """
    if adapter.plugin is not None:
        built = resolve(adapter.plugin).fund_centre(adapter, base_url, clock=clock or SystemClock())
        if built is not None:
            return built
    return HttpFundCentre(adapter, base_url, clock=clock)


def build_certificate_library(
    adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
) -> CertificateLibrary:
    """The connector to a province's e-certificate library at ``base_url``.

    Raises ``ValueError`` when the province's adapter has no
    ``[adapter.certificate]`` section or its category / field tables do not
    cover the catalogue.
    """
    return HttpCertificateLibrary(adapter, base_url, clock=clock)


def build_case_system(
    adapter: AdapterConfig, base_url: str, *, clock: Clock | None = None
) -> CaseSystem:
    """The connector to a province's case system at ``base_url``.

    Raises ``ValueError`` when the province's adapter has no ``[adapter.case]`` section.
    """
    return HttpCaseSystem(adapter, base_url, clock=clock)
