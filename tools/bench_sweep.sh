#!/usr/bin/env bash
# `make sweep` JOBS=1 against JOBS=2 on 4 pending sweep entries (tiny timm models, base.threads 1), each run on
# a fresh copy of the same demo workspace, back to back, twice.  Usage: tools/bench_sweep.sh [scratch dir]
# Prints the wall time of each run, the load, and which stages the `dvc repro` after it ran (only the plot).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$(realpath -m "${1:-/tmp/bench_sweep}")
VENV=${VENV:-.venv}
export PATH=$(realpath "$VENV")/bin:$PATH OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
git_c() { git -c user.name=bench -c user.email=bench@localhost "$@"; }
if [ ! -d "$DIR/base" ]; then
  python -m demo.run --dir "$DIR/base" --port "${DEMO_PORT:-8765}" > "$DIR.demo.log" 2>&1
  (cd "$DIR/base" && python - <<'PY'
import yaml
p = yaml.safe_load(open("params.yaml"))
p["base"]["threads"] = 1
p["sweep"]["archs"] = ["test_convnext", "test_byobnet", "test_nfnet", "test_vit2"]
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False)
PY
  dvc repro check_params finetune@pets finetune@monuments >> "$DIR.demo.log" 2>&1 &&
    git_c commit -qam "4 pending sweep entries, threads 1")
fi
for round in 1 2; do
  for jobs in 1 2; do
    ws=$DIR/r$round-j$jobs; rm -rf "$ws"; cp -a "$DIR/base" "$ws"
    load=$(cut -d' ' -f1-3 /proc/loadavg); start=$(date +%s.%N)
    make -s -o "$VENV/.installed" sweep VENV="$VENV" WORKSPACE="$ws" JOBS=$jobs > "$ws.log" 2>&1 || echo "failed: $ws.log"
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    ran=$(cd "$ws" && dvc repro 2>&1 | sed -n "s/^Running stage '\(.*\)':/\1/p" | tr '\n' ' ')
    printf 'round %s JOBS=%s: %6.1f s (load before %s, after %s); dvc repro after it ran: %s\n' \
      "$round" "$jobs" "$wall" "$load" "$(cut -d' ' -f1-3 /proc/loadavg)" "$ran"
  done
done
