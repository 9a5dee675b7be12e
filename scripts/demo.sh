#!/usr/bin/env bash
# The main job on the embedded default: synthetic MABe data -> prepare -> train (pair mode, CPU)
# -> evaluate -> predict -> submission -> competition score -> report. Extra args go to `mabe demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mabe demo "$@"
