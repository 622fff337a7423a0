#!/usr/bin/env bash
# Install snmpsim into a venv of its own, made with Debian's /usr/bin/python3, outside any home
# directory: run as root, snmpsim drops privileges (--process-user=nobody), and nobody must be able
# to read its Python. Idempotent: does nothing when the venv already holds these requirements.
# The venv is $SCALERUNNER_SNMPSIM_VENV (default /opt/scalerunner/snmpsim); tests look there too.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
reqs="$here/snmpsim-requirements.txt"
venv="${SCALERUNNER_SNMPSIM_VENV:-/opt/scalerunner/snmpsim}"
stamp="$venv/.requirements"
if [[ -x "$venv/bin/snmpsim-command-responder" && -f "$stamp" ]] && cmp -s "$reqs" "$stamp"; then
    exit 0
fi
echo "setup: installing snmpsim into $venv" >&2
mkdir -p "$(dirname "$venv")"
/usr/bin/python3 -m venv --clear "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
chmod -R a+rX "$venv"
cp "$reqs" "$stamp"
"$venv/bin/snmpsim-command-responder" --version >/dev/null
