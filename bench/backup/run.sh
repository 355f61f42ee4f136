#!/usr/bin/env bash
# Backup benchmark: builds the CLI and the benchmark, then runs it. Needs fio (nbd engine).
# Arguments go to bench/backup/run.ts (--data-mib N, --reps N, --no-docs).
set -euo pipefail
cd "$(dirname "$0")/../.."
npm run --silent build
npx tsc -p bench/backup/tsconfig.json
exec node dist/backup-bench/bench/backup/run.js "$@"
