"""The connectors a node gets to its own province's back-ends: the declarative
HTTP connector of each domain, unless the province's ``[adapter.plugin]``
builds its own."""

from __future__ import annotations

from adapters.base import CaseSystem, CertificateLibrary, FundCentre, IdentityAuthority
from adapters.case import HttpCaseSystem
from adapters.certificate import HttpCertificateLibrary
from adapters.fund import HttpFundCentre
from adapters.identity import HttpIdentityAuthority
from adapters.plugins import resolve
from adapters.spec import AdapterConfig
from gateway.core.clock import Clock, SystemClock


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
