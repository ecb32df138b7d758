#!/usr/bin/env bash
# Browser end-to-end test of `ferry ui`: builds ferry and ferry-relay (debug), installs the
# test's node modules when needed, runs ui-tests/e2e.mjs against the system Chromium.
#
# Needs node >= 20 with npm, /usr/bin/chromium (Debian: apt-get install chromium) and coturn's
# `turnserver`. Never downloads a browser: playwright-core drives the system Chromium.
#   FERRY_UI_SCREENSHOTS=1 bash ui-tests/run.sh   # also rewrites docs/screenshots/*.png
#   FERRY_UI_SKIP_BUILD=1                         # use the binaries already built
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."

command -v node >/dev/null || { echo "node is not installed (node >= 20 needed)" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is not installed" >&2; exit 1; }
chromium="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] || { echo "$chromium is missing (apt-get install chromium)" >&2; exit 1; }
command -v "${TURNSERVER:-turnserver}" >/dev/null \
  || { echo "turnserver (coturn) is not installed (apt-get install coturn)" >&2; exit 1; }

# npm ci when node_modules is missing or older than the lock file.
if [ ! -d ui-tests/node_modules ] \
  || [ ui-tests/package-lock.json -nt ui-tests/node_modules/.package-lock.json ]; then
  (cd ui-tests && npm ci --no-audit --no-fund)
fi

if [ "${FERRY_UI_SKIP_BUILD:-}" != 1 ]; then
  cargo build --locked -p ferry-relay -p ferry-client --bin ferry-relay --bin ferry
fi
target="${CARGO_TARGET_DIR:-target}"
export FERRY_BIN="${FERRY_BIN:-$target/debug/ferry}"
export FERRY_RELAY_BIN="${FERRY_RELAY_BIN:-$target/debug/ferry-relay}"
export CHROMIUM="$chromium"

echo "== ui-tests: $("$chromium" --version 2>/dev/null | tail -n1), node $(node --version)"
node ui-tests/e2e.mjs
