"""Adapters: canonical ⇄ native translation, back-end connectors.

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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapters.backends import build_case_system as build_case_system
    from adapters.backends import build_certificate_library as build_certificate_library
    from adapters.backends import build_fund_centre as build_fund_centre
    from adapters.backends import build_identity_authority as build_identity_authority
    from adapters.base import AdapterPlugin as AdapterPlugin
    from adapters.base import CaseSystem as CaseSystem
    from adapters.base import CertificateLibrary as CertificateLibrary
    from adapters.base import CredentialCheck as CredentialCheck
    from adapters.base import FundCentre as FundCentre
    from adapters.base import IdentityAuthority as IdentityAuthority
    from adapters.case import HttpCaseSystem as HttpCaseSystem
    from adapters.certificate import HttpCertificateLibrary as HttpCertificateLibrary
    from adapters.errors import AdapterError as AdapterError
    from adapters.errors import BackendRejected as BackendRejected
    from adapters.errors import BackendUnavailable as BackendUnavailable
    from adapters.errors import CaseNotFound as CaseNotFound
    from adapters.errors import CertificateNotFound as CertificateNotFound
    from adapters.errors import ConsentRefused as ConsentRefused
    from adapters.errors import PluginError as PluginError
    from adapters.errors import TranslationError as TranslationError
    from adapters.errors import WithdrawalNotFound as WithdrawalNotFound
    from adapters.fund import HttpFundCentre as HttpFundCentre
    from adapters.identity import HttpIdentityAuthority as HttpIdentityAuthority
    from adapters.mapping import Translator as Translator
    from adapters.mapping import from_message as from_message
    from adapters.mapping import to_message as to_message
    from adapters.spec import AdapterConfig as AdapterConfig

#: Where each name of the facade lives. Imported on first use (PEP 562), so
#: that a module needing one part (the config loader needs the mapping model)
#: does not pay for every connector and its HTTP client.
_WHERE = {
    "AdapterConfig": "adapters.spec",
    "AdapterError": "adapters.errors",
    "AdapterPlugin": "adapters.base",
    "BackendRejected": "adapters.errors",
    "BackendUnavailable": "adapters.errors",
    "CaseNotFound": "adapters.errors",
    "CaseSystem": "adapters.base",
    "CertificateLibrary": "adapters.base",
    "CertificateNotFound": "adapters.errors",
    "ConsentRefused": "adapters.errors",
    "CredentialCheck": "adapters.base",
    "FundCentre": "adapters.base",
    "HttpCaseSystem": "adapters.case",
    "HttpCertificateLibrary": "adapters.certificate",
    "HttpFundCentre": "adapters.fund",
    "HttpIdentityAuthority": "adapters.identity",
    "IdentityAuthority": "adapters.base",
    "PluginError": "adapters.errors",
    "TranslationError": "adapters.errors",
    "Translator": "adapters.mapping",
    "WithdrawalNotFound": "adapters.errors",
    "build_case_system": "adapters.backends",
    "build_certificate_library": "adapters.backends",
    "build_fund_centre": "adapters.backends",
    "build_identity_authority": "adapters.backends",
    "from_message": "adapters.mapping",
    "to_message": "adapters.mapping",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
