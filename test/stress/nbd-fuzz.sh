#!/usr/bin/env bash
# The NBD fuzz campaign: builds the server and the campaign with tsc, then runs it.
# Arguments go to test/stress/nbd-fuzz.ts (--frames N, --seed S, --max-minutes M, --workers W).
set -euo pipefail
cd "$(dirname "$0")/../.."
npm run --silent build
npx tsc -p test/stress/tsconfig.nbd-fuzz.json
exec node dist/stress-nbd-fuzz/test/stress/nbd-fuzz.js "$@"
