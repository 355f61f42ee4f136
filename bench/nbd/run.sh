#!/usr/bin/env bash
# Compiles the NBD benchmark (and the server it runs) with tsc, then runs it.
# Needs fio, nbdkit, qemu-nbd and qemu-img. Arguments go to bench/nbd/run.ts.
set -euo pipefail
cd "$(dirname "$0")/../.."
npx tsc -p bench/nbd/tsconfig.json
exec node dist/nbd-bench/bench/nbd/run.js "$@"
