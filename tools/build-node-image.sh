#!/usr/bin/env bash
# Build the amd64 node image into .cache/node-image/amd64 through the real command (make setup),
# so the tests boot it without building it. `scalerunner images build` reuses its output when
# the inputs (Debian suite and packages, the agent's dependencies, this checkout) are unchanged,
# so this is quick when the cache is current. SCALERUNNER_SKIP_NODE_IMAGE=1 skips it.
set -euo pipefail
[[ "${SCALERUNNER_SKIP_NODE_IMAGE:-}" == 1 ]] && exit 0
bin="${VENV:-.venv}/bin"
dest="${1:-.cache/node-image}"
"$bin/scalerunner" images build --arch amd64 --output "$dest/amd64" --cache-dir "$dest/layers" > /dev/null
