#!/usr/bin/env bash
# Issue 7's acceptance, as a new user meets the project: clone this repository's HEAD into an
# empty folder, run `make demo` there (it creates .venv and installs from the package registries),
# then open the demo's report in headless Chromium (Debian's package) and require that it loads
# with no console errors and that every image renders. Prints the demo's wall time.
#
#   scripts/check_fresh_demo.sh [WORK_DIR]      (default: a new temporary folder, kept for reading)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d /tmp/detkeeper-fresh-demo.XXXXXX)}"
git clone --quiet "$repo" "$work/detkeeper"
cd "$work/detkeeper"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/detkeeper"
start=$(date +%s)
make install
installed=$(date +%s)
make demo
echo "install took $(( installed - start )) s; the demo itself took $(( $(date +%s) - installed )) s"
test -f runs/demo/report.html
.venv/bin/python tests/report/headless_chromium.py runs/demo/report.html
