"""Store URLs as the config and the stores both read them (one reading, in the
core that both may import): which ``store`` values name a PostgreSQL database,
and how a URL is shown in a message without its password."""

from __future__ import annotations

#: The URL schemes of a PostgreSQL ``store``.
DATABASE_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(location: object) -> bool:
    """Whether a ``store`` setting names a PostgreSQL database (else: a folder)."""
    return isinstance(location, str) and location.startswith(DATABASE_SCHEMES)


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs). The
    user part ends at the last ``@`` before the path, so a password holding an
    ``@`` is hidden whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    credentials, _, host = authority.rpartition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}{slash}{path}"
