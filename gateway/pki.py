"""Development PKI: signing keys for every province's node and e-ID authority.

``yrd-gateway pki init DIR`` writes, per province code, ``DIR/<code>/``:

- ``signing.key.pem`` / ``signing.pub.pem``: the node's envelope signing key;
- ``eid-issuer.key.pem`` / ``eid-issuer.pub.pem``: the e-ID authority's token key.

These are for development and tests only; production keys are made and held
by each province's own key ceremony, and only public keys are exchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway import crypto

#: (file stem, purpose) of every key pair a province has.
KEY_KINDS: tuple[tuple[str, str], ...] = (
    ("signing", "node envelope signing key"),
    ("eid-issuer", "e-ID authority token signing key"),
    ("seal", "e-certificate issuing authority seal key"),
)


@dataclass(frozen=True)
class WrittenKey:
    province: str
    kind: str
    private_path: Path
    public_path: Path
    fingerprint: str


def init_keys(
    directory: Path, provinces: list[str], *, overwrite: bool = False
) -> list[WrittenKey]:
    """Create every key pair for every province; keep existing ones unless told."""
    written: list[WrittenKey] = []
    for code in provinces:
        folder = directory / code
        folder.mkdir(parents=True, exist_ok=True)
        for stem, _purpose in KEY_KINDS:
            private_path = folder / f"{stem}.key.pem"
            public_path = folder / f"{stem}.pub.pem"
            if private_path.exists() and not overwrite:
                key = crypto.load_private_key(private_path)
            else:
                key = crypto.generate_private_key()
                private_path.write_bytes(crypto.private_key_pem(key))
                private_path.chmod(0o600)
            public_path.write_bytes(crypto.public_key_pem(key.public_key()))
            written.append(
                WrittenKey(
                    code, stem, private_path, public_path, crypto.fingerprint(key.public_key())
                )
            )
    return written
