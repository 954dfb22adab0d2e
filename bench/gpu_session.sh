#!/usr/bin/env bash
# The one script a session runs on a lent GPU machine (torch and timm, but no network, fastai or DVC:
# ../shared/gpu/README.md): it installs wheels into a scratch folder, checks every import the steps need, then runs
# the STEPS, each with its own time limit, each writing into $OUT as it goes.
#   bench  python -m bench.gpu: the GPU figures (bench/gpu.py; partial.json keeps what a timeout leaves)
#   tests  pytest -m gpu
#   zoo    the architectures in .gpu/zoo_sample.txt as sweep entries until ZOO_DEADLINE_S; then, back here:
#          python -m stages.list_archs --sizes --estimate --metrics-dir <OUT>/zoo_metrics
# Prepare here (cp -r ../shared/gpu .gpu && echo /.gpu/ >> .git/info/exclude; cp312 wheels for its Python 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .gpu/whl -r bench/gpu-wheels.txt
#   python -m stages.list_archs --sample 20 --max-params 1000 > .gpu/zoo_sample.txt
# Dry-run here, tiny sizes on the CPU, with a Python that has only the machine's packages and wheels built for it:
#   GPU_SMOKE=1 PY=... WHEELS=... OUT=/tmp/dry bash bench/gpu_session.sh
# On the device (carry .gpu), two calls back to back:  OUT=$OUT STEPS="bench tests" bash bench/gpu_session.sh
# then OUT=$OUT STEPS=zoo bash bench/gpu_session.sh
set -u
: "${OUT:?set OUT to the folder for the results}"
STEPS=${STEPS:-bench tests zoo}
WHEELS=${WHEELS:-.gpu/whl}
SITE=${SITE:-/tmp/imgclf-site}
WORK=${WORK:-/tmp/imgclf-gpu}
PY=${PY:-python3}
ZOO_SAMPLE=${ZOO_SAMPLE:-$(cat .gpu/zoo_sample.txt 2>/dev/null | paste -sd, -)}
ZOO_DEADLINE_S=${ZOO_DEADLINE_S:-420}
SMOKE=${GPU_SMOKE:+--smoke}
mkdir -p "$OUT" "$WORK"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/session.log"; }

if [ -d "$WHEELS" ]; then
    log "installing $(ls "$WHEELS"/*.whl | wc -l) wheels into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl >>"$OUT/session.log" 2>&1 || { log "wheel install failed"; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD:$PYTHONPATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
# every import the steps need, at once: a missing wheel shows here, not minutes later
"$PY" - >"$OUT/env.json" 2>>"$OUT/session.log" <<'PYEOF' || { log "an import failed: see session.log"; exit 1; }
import json, os, sys
import dvclive, fastai, fastai.vision.learner, pydantic, pynvml, pytest, timm, torch, torchvision
import stages.sweep, stages.decode, bench.gpu
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
                  "timm": timm.__version__, "fastai": fastai.__version__, "pydantic": pydantic.VERSION, "gpu": gpu,
                  "cores": os.cpu_count()}, indent=2))
PYEOF
log "environment: $(tr -d '\n ' <"$OUT/env.json")"

for step in $STEPS; do
    log "step $step"
    case $step in
        bench)
            timeout 330 "$PY" -m bench.gpu "$WORK/bench" $SMOKE >"$OUT/bench_gpu.json" 2>"$OUT/bench_gpu.log"
            rc=$?
            cp "$WORK/bench/partial.json" "$OUT/bench_gpu_partial.json" 2>/dev/null
            (exit $rc) ;;
        tests) timeout 180 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py >"$OUT/tests_gpu.txt" 2>&1 ;;
        zoo)
            timeout $((ZOO_DEADLINE_S + 60)) "$PY" -m bench.gpu "$WORK/zoo" --zoo-sample "$ZOO_SAMPLE" \
                --deadline-s "$ZOO_DEADLINE_S" $SMOKE >"$OUT/zoo_sample.json" 2>"$OUT/zoo_sample.log"
            rc=$?
            cp -r "$WORK/zoo/stage_ws_4/metrics" "$OUT/zoo_metrics" 2>/dev/null
            (exit $rc) ;;
        *) log "unknown step $step"; false ;;
    esac
    log "step $step: exit $?"
done
