#!/usr/bin/env bash
# The GPU rerun of issue 14, one command on one CUDA GPU in under 8 minutes:
#
#   bash bench/gpu.sh            # on a machine with a CUDA GPU and this package installed
#   bash bench/gpu.sh --quick    # CPU dry run on the tiny model (tests/test_time_to_fit.py)
#
# What it runs, in priority order, each stage under its own time limit so the whole stays
# under 8 minutes (a stage cut by its limit loses only the run in flight: every finished run
# is a line of the runs file, and a rerun continues where it stopped):
#   1. time_to_fit.py --design gpu --stage tune      the init x lr grid on the tuning seeds
#   2. time_to_fit.py --design gpu --stage primary   BBH comparisons P1, P3 (+ the paper's init)
#                                                    on 20 evaluation seeds, budget 300 updates
#                                                    (the paper's 300 full-batch epochs)
#   3. the same for GSM8K (P2)
#   4. overhead.py on Gemma-3-270M, batch 8 x 512 tokens, bf16 (TSLoss + barcode callback vs
#      plain peft + Trainer)
#   5. the pages: bench/results/gpu/time_to_fit.{json,md}, overhead.{json,md}
# Everything lands in bench/results/gpu/ (--quick: a temporary folder). These are exploratory
# by bench/PROTOCOL.md section 6: the CPU primary results are never pooled with them.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[ "${1:-}" = "--quick" ] && quick=1
if [ "$quick" = 1 ]; then
  out="$(mktemp -d -t hf-tsprompt-gpu-quick-XXXXXX)"
  ttf=(python bench/time_to_fit.py --quick --out "$out")
  over=(python bench/overhead.py --quick --out "$out" "${@:2}")
  limit() { timeout "$1" "${@:2}"; }
else
  out="bench/results/gpu"
  python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh needs a CUDA GPU (torch.cuda.is_available() is False); "
             "use --quick for the CPU dry run")
print("GPU:", torch.cuda.get_device_name(0))
PY
  ttf=(python bench/time_to_fit.py --design gpu --device cuda --out "$out")
  over=(python bench/overhead.py --device cuda --dtype bfloat16 --model gemma-3-270m
        --batch-size 8 --seq-len 512 --steps 40 --repeats 3 --out "$out")
  # A stage past its limit is stopped; what it finished is kept (see above).
  limit() { timeout --signal=INT --kill-after=10 "$1" "${@:2}" || echo "stage stopped at ${1}"; }
fi
mkdir -p "$out"
start=$(date +%s)

if [ "$quick" = 1 ]; then
  limit 300 "${ttf[@]}"
else
  limit 100 "${ttf[@]}" --stage tune
  limit 150 "${ttf[@]}" --stage primary --comparisons bbh-tsloss bbh-tsloss-scalefree --with-paper-init
  limit 80 "${ttf[@]}" --stage primary --comparisons gsm8k-tsloss
  limit 30 "${ttf[@]}" --stage scale
  "${ttf[@]}" --report-only
fi
limit 120 "${over[@]}"
echo "bench/gpu.sh: done in $(( $(date +%s) - start )) s; results in $out"
