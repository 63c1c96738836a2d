#!/bin/sh
# The Debian programs the operator tests drive (besides PostgreSQL, see
# ensure_postgres.sh): headless Chromium and its ChromeDriver for the web
# console's browser tests, promtool (package `prometheus`) for the alert
# rules' unit tests, and a C compiler with the interpreter's headers for the
# compiled build's test (tests/integration/test_compiled.py). Does nothing
# when they are here; installs the packages when they are missing and we are
# root with apt-get; otherwise says how and fails. The `prometheus` package
# may start a server of its own: the tests never use it.
set -eu

missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v chromedriver >/dev/null 2>&1 || missing="$missing chromium-driver"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v gcc >/dev/null 2>&1 || missing="$missing gcc"
# The headers of the interpreter the tests run on ($1, else python3): a
# distribution's Python has them in its -dev package, a built one has its own.
if ! "${1:-python3}" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
    missing="$missing python3-dev"
fi

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_test_tools: missing$missing; install them: sudo apt-get install$missing" >&2
    exit 1
fi

echo "ensure_test_tools: installing Debian's$missing for the tests" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086 # one word per package
if ! apt-get install -y --no-install-recommends $missing; then
    apt-get update
    apt-get install -y --no-install-recommends $missing
fi
# The package's own Prometheus server is not ours to run.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
for tool in chromium chromedriver promtool gcc; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "ensure_test_tools: installed, but $tool is still not found" >&2
        exit 1
    fi
done
