#!/usr/bin/env bash
# Resume the demo's tiny GPT from its last checkpoint (made by examples/run_demo.sh) and train it
# to the end of its 600-iteration run (the same command, without the --exit-interval stop).
# The data position, optimizer state, learning-rate schedule and random state all come from the
# checkpoint, so the loss continues exactly as one uninterrupted run would have.
set -euo pipefail
cd "$(dirname "$0")/.."
RESUME=1 exec bash examples/run_demo.sh
