#!/usr/bin/env bash
# The injected-I/O-error campaign (docs/reliability.md): builds the pool and the campaign with
# tsc, then runs it. Needs root (FUSE), nbdkit, nbdfuse and thin_check (scripts/setup).
# Arguments go to test/stress/fault-campaign.ts (--rounds N, --max-minutes M, --only TEXT, --keep).
set -euo pipefail
cd "$(dirname "$0")/../.."
npm run --silent build
npx tsc -p test/stress/tsconfig.faults.json
exec node dist/stress-faults/test/stress/fault-campaign.js "$@"
