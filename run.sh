#!/usr/bin/env bash
# One command sets everything up on a fresh Debian 12 machine (run as root) and then
#   ./run.sh demo   – starts the simulator and the demo township (config/demo.yaml)
#   ./run.sh test   – runs ruff and the whole test suite against the simulator
# Re-running is cheap: packages, venv and pip installs are only done when missing or changed.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(mbpoll mosquitto mosquitto-clients alsa-utils)
# Only for the tests: the web console is tested in Debian's Chromium (driven by Playwright), and a
# CJK font makes the console's screenshots readable.
TEST_APT_PACKAGES=(chromium fonts-wqy-microhei postgresql)

install_system_packages() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        echo "run.sh: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

install_python_env() {
    [ -x .venv/bin/python ] || python3 -m venv .venv
    local stamp=.venv/.ebc-installed want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "run.sh: installing Python packages into .venv"
        .venv/bin/pip install -q --upgrade pip >/dev/null
        .venv/bin/pip install -q -e '.[dev]'
        echo "$want" > "$stamp"
    fi
}

if [ "${1:-}" = test ]; then
    install_system_packages "${APT_PACKAGES[@]}" "${TEST_APT_PACKAGES[@]}"
else
    install_system_packages "${APT_PACKAGES[@]}"
fi
install_python_env

case "${1:-}" in
    demo)
        shift
        exec .venv/bin/ebc demo "$@"
        ;;
    county-demo)
        shift
        exec .venv/bin/ebc county demo "$@"
        ;;
    test)
        shift
        .venv/bin/ruff check .
        mkdir -p test-output
        exec .venv/bin/pytest --junitxml=test-output/junit.xml "$@"
        ;;
    *)
        echo "usage: ./run.sh demo | ./run.sh county-demo | ./run.sh test [pytest args]" >&2
        exit 2
        ;;
esac
