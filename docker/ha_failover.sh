#!/bin/sh
# Shanghai as two replicas on PostgreSQL (docker/compose.ha.yaml): bring the stack
# up, play docker/scenarios.py, SIGKILL one Shanghai replica, play the scenarios
# again (they must pass on the other replica), bring the stack down (and delete
# its volumes). From the repository root, with the project's .venv:
#
#   docker/ha_failover.sh                 # KEEP=1 leaves the stack running
#
# YRD_PG_PASSWORD is made up for the run when not set. Exit 0 when both plays pass.
set -eu
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
if [ -z "${YRD_PG_PASSWORD:-}" ]; then
    YRD_PG_PASSWORD=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))')
fi
export YRD_PG_PASSWORD
COMPOSE="docker compose -f docker/compose.ha.yaml"
work=$(mktemp -d)

finish() {
    status=$?
    if [ "$status" -ne 0 ]; then
        $COMPOSE ps || true
        $COMPOSE logs --tail 50 node-shanghai-1 node-shanghai-2 postgres || true
    fi
    if [ "${KEEP:-0}" != 1 ]; then
        $COMPOSE down -v --remove-orphans || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap finish EXIT

step() { printf '\n== %s\n' "$*"; }

step "up: PostgreSQL, two Shanghai replicas, the other provinces (waits until healthy)"
$COMPOSE up -d --build --wait

step "scenarios with both Shanghai replicas (host calls Shanghai through replica 1, :7310)"
"$PYTHON" docker/scenarios.py

step "SIGKILL node-shanghai-1"
$COMPOSE kill -s SIGKILL node-shanghai-1
$COMPOSE ps node-shanghai-1 node-shanghai-2

# The host's hotel and office now call replica 2 (published on :7312); the other
# provinces reach Shanghai by the alias yrd-node-310000, which now names replica 2 only.
mkdir -p "$work/configs"
for file in province_configs/*/province.toml; do
    code=$(basename "$(dirname "$file")")
    mkdir -p "$work/configs/$code"
    cp "$file" "$work/configs/$code/province.toml"
done
sed -i -e 's|^endpoint = "127.0.0.1:7310"|endpoint = "127.0.0.1:7312"|' \
    "$work/configs/310000/province.toml"
grep -q '^endpoint = "127.0.0.1:7312"' "$work/configs/310000/province.toml" \
    || { echo "ha_failover: Shanghai's client endpoint not found to rewrite" >&2; exit 1; }

step "scenarios with replica 1 dead (host calls Shanghai through replica 2, :7312)"
"$PYTHON" docker/scenarios.py --configs "$work/configs"

step "both plays passed"
