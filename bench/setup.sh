#!/usr/bin/env bash
# Installs what bench/run.py needs: wrk, h2load, nginx, OpenSSH and curl from Debian (as root),
# valgrind for bench/instructions.py,
# and into the project's virtualenv matplotlib for the chart and hypercorn for the hypercorn-trio
# reference. Installs nothing already present.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
need=()
have wrk || need+=(wrk)
have h2load || need+=(nghttp2-client)
have nginx || need+=(nginx)
{ have ssh && have ssh-keygen; } || need+=(openssh-client)
have sshd || need+=(openssh-server)
have curl || need+=(curl)
have valgrind || need+=(valgrind)  # bench/instructions.py

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bench needs Debian packages: ${need[*]}" >&2
    echo "install them as root: apt-get install ${need[*]}" >&2
    exit 1
  fi
  # The bench starts its own nginx and sshd on loopback; keep the packages' scripts from
  # starting the system services while installing.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

PY=${PY:-.venv/bin/python}
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
  "$PY" -m pip install --quiet 'matplotlib>=3.8' \
    || echo "matplotlib could not be installed: the bench will run without its chart" >&2
fi
if ! "$PY" -c 'import hypercorn' 2>/dev/null; then
  "$PY" -m pip install --quiet 'hypercorn[trio]>=0.18' \
    || echo "hypercorn could not be installed: the hypercorn-trio target will be marked failed" >&2
fi
