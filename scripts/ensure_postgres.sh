#!/bin/sh
# The PostgreSQL server binaries the tests start a throw-away server with
# (gateway/testing/postgres.py): does nothing when they are here (on PATH or in
# /usr/lib/postgresql/<version>/bin); installs Debian's `postgresql` package when
# they are missing and we are root with apt-get; otherwise says how and fails.
# The package may start a cluster service of its own: the tests never use it.
set -eu
PG_ROOT=${YRD_PG_ROOT:-/usr/lib/postgresql}   # where Debian puts each major version

have_server() {
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 \
        && command -v postgres >/dev/null 2>&1; then
        return 0
    fi
    for bin in "$PG_ROOT"/*/bin; do
        if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$bin/postgres" ]; then
            return 0
        fi
    done
    return 1
}

if have_server; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_postgres: the PostgreSQL server binaries (initdb, pg_ctl, postgres) are missing; install them: sudo apt-get install postgresql" >&2
    exit 1
fi

echo "ensure_postgres: installing Debian's postgresql package for the tests" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends postgresql; then
    apt-get update
    apt-get install -y --no-install-recommends postgresql
fi
if ! have_server; then
    echo "ensure_postgres: postgresql installed, but its server binaries are still not found" >&2
    exit 1
fi
