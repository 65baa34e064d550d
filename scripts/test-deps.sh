#!/usr/bin/env bash
# Installs what the test suite needs outside the Python virtualenv, or says how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "make test: $*" >&2; exit 1; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        fail "missing $1; install it with: sudo apt-get install $2"
    fi
    echo "installing $2 (Debian packages) ..."
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $2 >/dev/null 2>&1; then
        apt-get update -q >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q $2 >/dev/null \
            || fail "could not install $2 with apt-get"
    fi
}

command -v ip >/dev/null || apt_install "ip (iproute2)" iproute2
# OpenSSH for the `access tcp` ProxyCommand test: a throw-away sshd on loopback. Keep the
# package's scripts from starting the system sshd while installing.
if ! { command -v ssh >/dev/null && command -v ssh-keygen >/dev/null \
        && { command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; }; }; then
    if [ "$(id -u)" = 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt_install "sshd and ssh (OpenSSH)" "openssh-server openssh-client"
fi
# sshd refuses to start without its privilege-separation directory, which only the system
# service creates.
if [ ! -d /run/sshd ]; then
    if [ "$(id -u)" = 0 ]; then
        mkdir -p -m 0755 /run/sshd
    else
        fail "sshd needs /run/sshd; create it with: sudo mkdir -p -m 0755 /run/sshd"
    fi
fi
[ -x /usr/bin/chromium ] || apt_install "/usr/bin/chromium" chromium
command -v node >/dev/null || fail "node (Node.js 20+) is needed for the test identity provider: apt-get install nodejs npm"
command -v npm >/dev/null || fail "npm is needed for the test identity provider: apt-get install npm"

# PostgreSQL for the multi-edge store tests: use TUNNELGATE_TEST_POSTGRES, or the local server.
if [ -z "${TUNNELGATE_TEST_POSTGRES:-}" ] && command -v pg_isready >/dev/null \
        && ! pg_isready -q -h 127.0.0.1 -p 5432; then
    if [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        echo "starting the local PostgreSQL cluster ..."
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    fi
fi

if [ -f tests/idp/package-lock.json ]; then
    if [ ! -d tests/idp/node_modules ] || [ tests/idp/package-lock.json -nt tests/idp/node_modules ]; then
        echo "installing the test identity provider (npm ci in tests/idp) ..."
        (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error) \
            || fail "npm ci in tests/idp failed; the npm registry must be reachable"
        touch tests/idp/node_modules
    fi
fi
