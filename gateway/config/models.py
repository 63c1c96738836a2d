"""Province configs as frozen models (read by :mod:`gateway.config.loading`).

Each province has a folder ``<code>/`` holding ``province.toml`` (its own
settings, its ``[[peers]]`` and ``[directory]``), ``keys/`` and ``golden/``. For
now every node still reads its peers' ``province.toml`` too, for their public part
(endpoint, public keys with validity windows, services). Relative paths in
a file are resolved against that file's folder. Any problem, in any file, is
reported together in one :class:`~gateway.core.errors.ConfigError` whose lines each
name the file, the key path, the value and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from adapters.plugins import PluginRegistry, plugin_problems
from adapters.spec import AdapterConfig, problems_error
from gateway.config.peers import PeerFacts
from gateway.core.channels import split_endpoints
from gateway.core.identifiers import validate_region_code
from gateway.core.urls import DATABASE_SCHEMES, display_url
from yrd.common.v1 import common_pb2
from yrd.identity.v1 import identity_pb2

#: Logical federation services (DESIGN §2) and their request/response payload types.
FEDERATION_SERVICES: dict[str, tuple[str, str]] = {
    "identity.CheckCredential": (
        "yrd.federation.v1.CredentialCheckRequest",
        "yrd.federation.v1.CredentialCheckResponse",
    ),
    "fund.QueryAccount": ("yrd.fund.v1.QueryFundAccountRequest", "yrd.fund.v1.FundAccount"),
    "fund.DeliverWithdrawal": (
        "yrd.fund.v1.WithdrawalApplication",
        "yrd.federation.v1.DeliveryAck",
    ),
    "fund.WithdrawalStatus": (
        "yrd.fund.v1.WithdrawalStatusUpdate",
        "yrd.federation.v1.DeliveryAck",
    ),
    "certificate.Fetch": (
        "yrd.certificate.v1.GetCertificateRequest",
        "yrd.certificate.v1.Certificate",
    ),
    "case.DeliverCase": ("yrd.case.v1.CaseApplication", "yrd.federation.v1.DeliveryAck"),
    "case.CaseStatus": ("yrd.case.v1.CaseStatusUpdate", "yrd.federation.v1.DeliveryAck"),
}

#: Public gRPC services a local client may be granted.
PUBLIC_SERVICES = frozenset(
    {
        "yrd.identity.v1.IdentityService",
        "yrd.fund.v1.FundService",
        "yrd.certificate.v1.CertificateService",
        "yrd.case.v1.CaseService",
        "yrd.admin.v1.AdminService",
    }
)

PURPOSES = frozenset(
    name for name in identity_pb2.Purpose.DESCRIPTOR.values_by_name if name != "PURPOSE_UNSPECIFIED"
)
DISCLOSABLE_ATTRIBUTES = frozenset(
    [f.name for f in common_pb2.Person.DESCRIPTOR.fields] + ["age_over_18"]
)

_KEY_ID = r"^[A-Za-z0-9._:-]{1,128}$"
_ENDPOINT = re.compile(r"[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}")

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]", "::", ""})  # noqa: S104 - recognised, never bound

RegionCode = Annotated[str, Field(pattern=r"^[1-9][0-9]{5}$")]
KeyId = Annotated[str, Field(pattern=_KEY_ID)]


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    if value is None or value.is_absolute():
        return value
    base = (info.context or {}).get("base_dir")
    return (Path(base) / value).resolve() if base else value


def _names_from(value: tuple[str, ...], allowed: Collection[str], what: str) -> tuple[str, ...]:
    """``value`` when every name in it is one of ``allowed``; else the expectation."""
    for name in value:
        if name not in allowed:
            raise ValueError(f"{what} from {sorted(allowed)}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProvinceSection(_Model):
    code: RegionCode
    name: str = Field(min_length=1)
    local_name: str = ""
    #: Operator contact (e-mail or similar), published in this node's descriptor.
    contact: str = ""

    @field_validator("code")
    @classmethod
    def _province_level(cls, value: str) -> str:
        return _province_level(value)


def _province_level(value: str) -> str:
    if not value.endswith("0000"):
        raise ValueError("a province-level GB/T 2260 code ending in 0000")
    return value


def _host_port(value: str | None) -> str | None:
    if value is not None and not _ENDPOINT.fullmatch(value):
        raise ValueError("host:port")
    return value


class PeerEntry(_Model):
    """A ``[[peers]]`` entry: a peer province and where its descriptor is fetched
    first. Everything else about the peer comes from its signed descriptor."""

    code: RegionCode
    #: host:port of the peer's federation endpoint (bootstrap): one, or several
    #: (a TOML list or a comma list) when the peer runs several replicas. Kept
    #: as one comma-separated string; :attr:`endpoints` lists them.
    endpoint: str
    name: str = ""

    @field_validator("code")
    @classmethod
    def _province_level(cls, value: str) -> str:
        return _province_level(value)

    @field_validator("endpoint", mode="before")
    @classmethod
    def _endpoint(cls, value: object) -> object:
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            return value  # the str type check names what was expected
        endpoints = split_endpoints(value)
        if not endpoints or len(endpoints) > 8:
            raise ValueError("host:port, or a list of 1 to 8 host:port")
        for endpoint in endpoints:
            if not _ENDPOINT.fullmatch(endpoint):
                raise ValueError("host:port, or a list of host:port")
        return ",".join(endpoints)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The bootstrap endpoints, in order of preference."""
        return split_endpoints(self.endpoint)


class DirectorySection(_Model):
    """``[directory]``: how this node publishes its descriptor and checks its peers'."""

    #: How often each peer's descriptor is checked (fetched only if its serial changed).
    refresh_seconds: float = Field(300.0, ge=0.05, le=86_400)
    #: not_after of this node's own descriptor = issued_at + this; re-issued at half.
    validity_days: float = Field(7.0, gt=0, le=365)


class NodeSection(_Model):
    #: host:port where local clients reach the node (TLS, token or no client certificate).
    endpoint: str
    #: host:port where peer nodes (and certificate-holding local clients) reach the
    #: node over mutual TLS. Required with [tls]; without TLS it may be omitted
    #: (development only) and peers use ``endpoint``.
    federation_endpoint: str | None = None
    #: Where the node's stores live: a folder of SQLite files (messages.db: message
    #: log; state.db: cases, outbox), or a ``postgresql://user@host:port/db`` URL
    #: that the replicas of a province share (password from PGPASSWORD or ~/.pgpass).
    store: Path | str = Path("var")
    #: This replica's name (logs, metrics, lease owners): letters, digits and '-'.
    replica: str = Field("1", pattern=r"^[A-Za-z0-9-]{1,32}$")
    #: With a database store: the folder of this replica's own files (node.lock,
    #: the directory cache). Default ``var/<code>-<replica>``, resolved like store.
    #: With a folder store those files stay in the store folder.
    local_dir: Path | None = None
    max_clock_skew_seconds: int = Field(120, ge=1, le=3600)
    status_max_age_seconds: int = Field(30, ge=1, le=3600)
    #: host:port of the Prometheus /metrics endpoint (HTTP; keep it on loopback or
    #: a management network). Omitted: no metrics endpoint.
    metrics_endpoint: str | None = None
    #: Longest wait between two delivery attempts of an outbox item.
    outbox_max_backoff_seconds: float = Field(5.0, ge=0.1, le=3600)
    #: An outbox item still failing this long after it was written is PARKED for an
    #: operator (``yrd-gateway outbox list --parked``) instead of retried for ever.
    park_after_seconds: float = Field(86_400.0, gt=0, le=365 * 86_400)
    #: How often the node verifies its message log's hash chain in the background
    #: (the metric yrd_message_log_intact); 0: never (VerifyMessageLog still does).
    log_verify_seconds: float = Field(3600.0, ge=0, le=30 * 86_400)
    #: Exchanges with a peer travel on one long-lived Stream, in batches signed
    #: once (docs/federation-stream.md); false: one unary Exchange call each.
    federation_stream: bool = True
    #: How long a replica's claim (lease) on an outbox item or an incoming case
    #: lasts unless renewed (every third of it): a killed replica's work is
    #: taken over by the others after at most this long. Above twice a back-end
    #: call's timeout (5 s): a case is handed to its back-end only while its
    #: lease outlasts the call.
    lease_seconds: float = Field(15.0, gt=10, le=3600)
    #: Calls one worker serves at once (local and federation calls together).
    #: Beyond it a call is refused at once with RESOURCE_EXHAUSTED instead of
    #: queueing: an overloaded node sheds load with bounded memory and latency.
    max_concurrent_calls: int = Field(500, ge=1, le=100_000)
    #: Where peers reach this node's federation endpoint, as its descriptor
    #: publishes them (host:port, in order of preference). Default: the
    #: federation_endpoint itself. Set it when the node binds an address peers
    #: cannot use (0.0.0.0 in a container, behind NAT or a load balancer).
    published_endpoints: tuple[str, ...] = Field((), max_length=8, validate_default=True)

    @field_validator("endpoint", "federation_endpoint", "metrics_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _host_port(value)

    @field_validator("published_endpoints")
    @classmethod
    def _published(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for endpoint in value:
            _host_port(endpoint)
            if endpoint.rpartition(":")[0] in _WILDCARD_HOSTS:
                raise ValueError("host:port peers can connect to (not a wildcard address)")
        bound = info.data.get("federation_endpoint") or info.data.get("endpoint") or ""
        if not value and bound.rpartition(":")[0] in _WILDCARD_HOSTS:
            raise ValueError(
                f"host:port peers can reach, since the federation endpoint binds every "
                f"interface ({bound})"
            )
        return value

    @property
    def peer_endpoint(self) -> str:
        """Where this node listens for federation envelopes."""
        return self.federation_endpoint or self.endpoint

    @property
    def advertised_endpoints(self) -> tuple[str, ...]:
        """Where peers send federation envelopes (published in the descriptor)."""
        return self.published_endpoints or (self.peer_endpoint,)

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, value: object, info: ValidationInfo) -> Path | str:
        if isinstance(value, str) and value.startswith(DATABASE_SCHEMES):
            return _database_url(value)
        if isinstance(value, str) and "://" in value:
            raise ValueError("a folder or a postgresql://user@host:port/database URL")
        if not isinstance(value, str | Path):
            raise ValueError("a folder or a postgresql://user@host:port/database URL")
        return _resolve(Path(value), info) or Path(value)

    @field_validator("local_dir")
    @classmethod
    def _local_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and not isinstance(info.data.get("store", ""), str):
            raise ValueError(
                "no value with a folder store (the node's own files stay in that folder); "
                "local_dir is for a postgresql:// store"
            )
        return _resolve(value, info)

    @property
    def store_is_database(self) -> bool:
        """Whether the stores are in a PostgreSQL database (else SQLite files)."""
        return isinstance(self.store, str)

    @property
    def local_folder(self) -> Path:
        """Where this node keeps its own files (node.lock, the directory cache):
        the store folder, or ``local_dir`` when the store is a database."""
        if isinstance(self.store, Path):
            return self.store
        return self.local_dir or Path("var") / f"node-{self.replica}"

    @property
    def store_kind(self) -> str:
        """ "sqlite" or "postgresql" (for listings and logs)."""
        return "postgresql" if self.store_is_database else "sqlite"


def hide_password(value: object) -> object:
    """``value`` as a config error may show it: a URL's password as ``***`` (in a
    section's table too)."""
    if isinstance(value, dict):
        return {key: hide_password(item) for key, item in value.items()}
    if not isinstance(value, str):
        return value
    return display_url(value)


def _database_url(value: str) -> str:
    """A ``postgresql://`` store URL, refused when it carries a password."""
    try:
        parts = urlsplit(value)
        password = parts.password
        query = parse_qs(parts.query)
    except ValueError as exc:
        raise ValueError("a postgresql://user@host:port/database URL") from exc
    if password is not None or "password" in query:
        raise ValueError(
            "a URL without a password (put it in PGPASSWORD or ~/.pgpass, never in the config file)"
        )
    if not parts.path.strip("/"):
        raise ValueError("a postgresql://user@host:port/database URL naming the database")
    return value


class PublishedKey(_Model):
    key_id: KeyId
    public_key: Path
    not_before: datetime
    not_after: datetime
    #: Own file only: the private part, for a key this node signs with during
    #: its window (key rotation). Peers' files never carry it.
    private_key: Path | None = None

    _public_key = field_validator("public_key")(_resolve)
    _private_key = field_validator("private_key")(_resolve)

    @model_validator(mode="after")
    def _window(self) -> PublishedKey:
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise ValueError("not_before and not_after as UTC instants (ending in Z)")
        if self.not_after <= self.not_before:
            raise ValueError("not_after later than not_before")
        return self


class SigningSection(_Model):
    private_key: Path | None = None
    key_id: KeyId
    public_keys: tuple[PublishedKey, ...] = Field(min_length=1)

    _private_key = field_validator("private_key")(_resolve)

    @model_validator(mode="after")
    def _own_key_published(self) -> SigningSection:
        if self.key_id not in {k.key_id for k in self.public_keys}:
            raise ValueError(f"key_id {self.key_id!r} to be one of signing.public_keys")
        return self


class EidSection(_Model):
    authority_url: str = Field(pattern=r"^https?://")
    issuer_private_key: Path | None = None
    issuer_keys: tuple[PublishedKey, ...] = Field(min_length=1)

    _issuer_private_key = field_validator("issuer_private_key")(_resolve)


class FundSection(_Model):
    centre_url: str = Field(pattern=r"^https?://")


class CertificateSection(_Model):
    """This province's e-certificate library, and the keys its issuing
    authorities seal certificates with (published to every province)."""

    library_url: str | None = Field(None, pattern=r"^https?://")
    seal_keys: tuple[PublishedKey, ...] = ()


class CaseSection(_Model):
    """This province's system for inter-provincial service cases."""

    system_url: str = Field(pattern=r"^https?://")


class ServicesSection(_Model):
    offers: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()

    @field_validator("offers", "calls")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _names_from(value, FEDERATION_SERVICES, "federation service names")


class TlsSection(_Model):
    """This node's transport identity (own file only; peers need just the CA)."""

    certificate: Path
    private_key: Path
    #: The federation CA's certificate: the trust anchor for peers and clients.
    ca: Path

    _certificate = field_validator("certificate")(_resolve)
    _private_key = field_validator("private_key")(_resolve)
    _ca = field_validator("ca")(_resolve)


class ConsoleSection(_Model):
    """``[console]``: the web console for operators (HTTPS with the node's [tls]
    certificate; needs [tls]). Absent: no console. Production configs should omit
    it unless operators reach it over a management network only."""

    #: host:port the console listens on (HTTPS); keep it on loopback or a
    #: management network. Port 0: any free port (tests, the demo).
    endpoint: str
    #: A console session not used for this long is ended (the operator logs in again).
    session_idle_seconds: int = Field(900, ge=30, le=86_400)
    #: Sessions kept at once; past it, the least recently used one is ended.
    max_sessions: int = Field(16, ge=1, le=1000)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        _host_port(value)
        return value


class ClientSection(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    name: str = ""
    #: SHA-256 (hex) of the client's bearer token ...
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    #: ... and/or SHA-256 (hex) of its TLS client certificate (DER), for clients
    #: that call the mutual-TLS federation endpoint.
    certificate_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    services: tuple[str, ...] = ()
    purposes: tuple[str, ...] = ()
    #: Purposes it may fetch e-certificates for (codes agreed in the federation,
    #: e.g. MARRIAGE_REGISTRATION); sent with each request and logged.
    certificate_purposes: tuple[str, ...] = ()
    #: Calls per second allowed on average, and the burst above it.
    rate_per_second: float = Field(50.0, gt=0, le=100_000)
    burst: int = Field(100, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _credential(self) -> ClientSection:
        if self.token_sha256 is None and self.certificate_sha256 is None:
            raise ValueError("token_sha256 or certificate_sha256 (a client needs a credential)")
        return self

    @field_validator("services")
    @classmethod
    def _services(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _names_from(value, PUBLIC_SERVICES, "gRPC service names")

    @field_validator("purposes")
    @classmethod
    def _purposes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _names_from(value, PURPOSES, "purposes")


class ProvinceConfig(_Model):
    """One province's config file, validated."""

    province: ProvinceSection
    node: NodeSection
    signing: SigningSection
    eid: EidSection
    fund: FundSection | None = None
    certificate: CertificateSection | None = None
    case: CaseSection | None = None
    tls: TlsSection | None = None
    #: The web console (``[console]``); absent: none.
    console: ConsoleSection | None = None
    services: ServicesSection = ServicesSection()
    disclosure: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    clients: tuple[ClientSection, ...] = ()
    #: The peers this node federates with (code and bootstrap endpoint each).
    peers: tuple[PeerEntry, ...] = ()
    directory: DirectorySection = DirectorySection()
    adapter: AdapterConfig
    #: The file this config was read from (set by the loader).
    source: Path = Path("<memory>")

    @field_validator("adapter")
    @classmethod
    def _adapter_plugin(cls, value: AdapterConfig, info: ValidationInfo) -> AdapterConfig:
        # The plug-in [adapter.plugin] names must be installed, and take its
        # settings, before a node starts. An embedding application or a test may
        # pass its own registry in the validation context ("adapter_plugins").
        context = info.context if isinstance(info.context, dict) else {}
        registry = context.get("adapter_plugins")
        problems = plugin_problems(
            value, registry if isinstance(registry, PluginRegistry) else None
        )
        if problems:
            raise problems_error(problems)
        return value

    @field_validator("node")
    @classmethod
    def _local_dir_default(cls, value: NodeSection, info: ValidationInfo) -> NodeSection:
        # A database store: this replica's own files default to var/<code>-<replica>,
        # resolved against the config's folder like store.
        province = info.data.get("province")
        if value.store_is_database and value.local_dir is None and province is not None:
            folder = Path("var") / f"{province.code}-{value.replica}"
            base = (info.context or {}).get("base_dir")
            resolved = (Path(base) / folder).resolve() if base else folder
            return value.model_copy(update={"local_dir": resolved})
        return value

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: tuple[PeerEntry, ...], info: ValidationInfo) -> tuple[PeerEntry, ...]:
        province = info.data.get("province")
        own = province.code if isinstance(province, ProvinceSection) else None
        seen: set[str] = set()
        for index, peer in enumerate(value):
            if peer.code == own:
                raise ValueError(
                    f"peer codes other than this province's own ({own}), "
                    f"not {peer.code!r} at peers.{index}.code"
                )
            if peer.code in seen:
                raise ValueError(
                    f"each peer code once, not {peer.code!r} again at peers.{index}.code"
                )
            seen.add(peer.code)
        return value

    @field_validator("disclosure")
    @classmethod
    def _disclosure(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for purpose, attributes in value.items():
            if purpose not in PURPOSES:
                raise ValueError(f"purposes from {sorted(PURPOSES)} as keys, not {purpose!r}")
            for attribute in attributes:
                if attribute not in DISCLOSABLE_ATTRIBUTES:
                    raise ValueError(
                        f"attribute names from {sorted(DISCLOSABLE_ATTRIBUTES)} in "
                        f"disclosure.{purpose}, not {attribute!r}"
                    )
        return value

    @property
    def code(self) -> str:
        return self.province.code

    def client_by_token_digest(self, digest: str) -> ClientSection | None:
        for client in self.clients:
            if client.token_sha256 == digest:
                return client
        return None

    def client_by_certificate(self, fingerprint: str) -> ClientSection | None:
        for client in self.clients:
            if client.certificate_sha256 == fingerprint:
                return client
        return None


class FederationConfig(_Model):
    """What a node runs with: its own province's config, and the peers in force.

    ``peers`` holds, for each peer this node's config names under ``[[peers]]``,
    the public facts of the current descriptor it published (verified by the
    directory, :mod:`gateway.federation.directory`). A configured peer with no
    current descriptor (none fetched yet, or expired) is absent: it is treated
    as unavailable.
    """

    me: ProvinceConfig
    peers: dict[str, PeerFacts] = Field(default_factory=dict)

    @property
    def own(self) -> str:
        return self.me.code

    @property
    def peer_codes(self) -> tuple[str, ...]:
        """Every peer this node's config names, in force or not, by code."""
        return tuple(sorted(peer.code for peer in self.me.peers))

    def peer(self, code: str) -> PeerFacts | None:
        """A peer's facts, if its descriptor is in force."""
        return self.peers.get(code)

    def with_peers(self, peers: dict[str, PeerFacts]) -> FederationConfig:
        return FederationConfig(me=self.me, peers=peers)

    def with_me(self, me: ProvinceConfig) -> FederationConfig:
        """This node's config changed (a reload): peers it no longer names leave."""
        named = {peer.code for peer in me.peers}
        return FederationConfig(me=me, peers={c: f for c, f in self.peers.items() if c in named})

    def require_peer(self, field_name: str, province: str, service: str) -> PeerFacts | None:
        """The peer named in a request field: a province of this node's federation,
        not its own, whose descriptor offers ``service`` (and this node may call it);
        otherwise a status naming the field. None when the peer is configured but
        has no current descriptor (it is unavailable now: a tracked exchange waits
        in the outbox for it, a direct call fails UNAVAILABLE)."""
        from gateway.core.errors import FailedPrecondition, InvalidArgument

        validate_region_code(field_name, province)
        if province == self.own:
            raise InvalidArgument(
                field_name,
                f"a province other than this node's own ({self.own}); this node's "
                "own back-ends are reached directly",
            )
        if province not in self.peer_codes:
            raise InvalidArgument(
                field_name, f"a province of the federation ({', '.join(self.peer_codes)})"
            )
        if service not in self.me.services.calls:
            raise FailedPrecondition(
                f"{field_name}: this node ({self.own}) is not configured to call {service} "
                "([services] calls)"
            )
        peer = self.peers.get(province)
        if peer is None:
            return None
        if not peer.offers_service(service):
            raise FailedPrecondition(
                f"{field_name}: province {province} does not offer {service} (its descriptor "
                f"serial {peer.serial}; see `yrd-gateway directory list`)"
            )
        return peer


def key_expiries(federation: FederationConfig) -> list[tuple[str, str, str, datetime]]:
    """(province, kind, key id, not after) of every published key this node
    trusts: its own envelope signing, e-ID issuer and seal keys, and those of
    every peer in force (from their descriptors), for the expiry metric."""
    me = federation.me
    found = [(me.code, "signing", k.key_id, k.not_after) for k in me.signing.public_keys]
    found += [(me.code, "eid_issuer", k.key_id, k.not_after) for k in me.eid.issuer_keys]
    if me.certificate is not None:
        found += [(me.code, "seal", k.key_id, k.not_after) for k in me.certificate.seal_keys]
    for code, peer in sorted(federation.peers.items()):
        for kind, keys in (
            ("signing", peer.signing_keys),
            ("eid_issuer", peer.eid_issuer_keys),
            ("seal", peer.seal_keys),
        ):
            found += [(code, kind, k.key_id, k.not_after) for k in keys]
    return found
