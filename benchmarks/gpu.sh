#!/usr/bin/env bash
# GPU profile: the benchmark configs at sizes for one H100 / H200, every results.json under OUT.
#
#   bash benchmarks/gpu.sh OUT            # the profile (meant to finish in under 8 minutes)
#   bash benchmarks/gpu.sh --dry OUT      # tiny sizes: checks the script end to end on a CPU
#   KSEQ_GPU_SMOKE=1 bash benchmarks/gpu.sh OUT    # the same as --dry
#   PYTHON=.venv/bin/python bash benchmarks/gpu.sh OUT   # another interpreter (default: python)
#
# Runs from a plain checkout (PYTHONPATH=.) and needs only kseq's own dependencies (jax with
# CUDA, flax, equinox, optax, orbax, chex, jaxtyping, numpy, pyyaml, matplotlib, tqdm). The
# comparators are optional: bench_tests needs hyppo and bench_thinning needs goodpoints
# (`pip install 'kseq[bench]'`); without them those two configs stop with a one-line error
# before making a run folder, the script goes on, and kt_mmd_rate still times kernel
# thinning and Compress++ on their own. Each config runs under a time limit (the third column
# below); one that fails or overruns is reported at the end (exit status 1), the others still
# run. An overrun run is stopped as by Ctrl-C and keeps its finished units, so
# `kseq run --resume <its folder>` finishes it.
#
# The table of runs. Columns, separated by "|": label | config | time limit (s) | --set
# overrides of the profile | --set overrides of the smoke mode. Overrides are space-separated
# KEY=VALUE (YAML values without spaces). tests/test_gpu_script.py reads this table and loads
# every config with each set of overrides.
#
# Sizes. bench_tests: n up to 4000 (CPU profile: 2000); hyppo runs on the CPU, so its
# permutation tests use 2 permutations, timed and scaled to 1000. bench_thinning: kseq against
# goodpoints up to 2^14 (goodpoints' KT stores the n x n matrix), kseq alone up to 2^18 (KT)
# and 2^22 (Compress++); peak RSS is not measured (a fresh process per call, and a GPU's
# memory is not RSS). bench_scan: the three solvers up to L = 2^16, then the log-depth ones
# alone up to 2^20 (the sequential scan is one step per loop iteration on a GPU).
# bench_deer: L up to 10^5 and H up to 128, Newton's Jacobians allowed up to 16 GB.
# bench_layers: GateLoop (chunkwise, parallel), LearnedKernelAttention, LRU and softmax
# attention at L = 16k and 64k, d = 256, 4 heads, plans up to 60 GB run (softmax's 64k
# forward+backward plans more, and is recorded as skipped).
# kt_mmd_rate: the MMD rates of i.i.d. thinning, KT, KT+ and Compress++ up to n = 2^16, on
# the Gaussian and the mixture, no comparator needed.

set -uo pipefail

read -r -d '' RUNS <<'END_OF_RUNS'
bench_tests|configs/bench_tests.yaml|85|params.sample_sizes=[1000,2000,4000] params.num_permutations=1000 params.repeats=3 params.hyppo_permutation_max_n=500 params.hyppo_reps_large=2|params.sample_sizes=[40] params.num_permutations=20 params.repeats=1 params.hyppo_permutation_max_n=10 params.hyppo_reps_large=2
bench_thinning|configs/bench_thinning.yaml|90|params.sample_sizes=[4096,16384] params.dims=[2] params.repeats=3 params.goodpoints_matrix_max_n=16384 params.goodpoints_thin_max_n=0 params.kt_only_sizes=[65536,262144] params.compresspp_only_sizes=[1048576,4194304] params.mmd_max_n=65536 params.measure_memory=false|params.sample_sizes=[64] params.dims=[2] params.repeats=1 params.goodpoints_matrix_max_n=64 params.goodpoints_thin_max_n=0 params.kt_only_sizes=[] params.compresspp_only_sizes=[256] params.mmd_max_n=256 params.measure_memory=false
bench_scan|configs/bench_scan.yaml|45|params.lengths=[4096,16384,65536] params.batch=4 params.channels=256 params.repeats=5|params.lengths=[64] params.batch=2 params.channels=8 params.repeats=1
bench_scan_long|configs/bench_scan.yaml|40|name=bench_scan_long params.lengths=[262144,1048576] params.batch=4 params.channels=256 params.methods=[associative,chunked] params.repeats=5|name=bench_scan_long params.lengths=[128] params.batch=2 params.channels=8 params.methods=[associative,chunked] params.repeats=1
bench_layers|configs/bench_layers.yaml|50|params.lengths=[16384,65536] params.layers=[gateloop,gateloop:parallel,learned_kernel,lru,softmax] params.repeats=3 params.memory_budget_mb=60000|params.lengths=[32] params.d_model=8 params.num_heads=2 params.state_size=4 params.num_features=4 params.chunk_size=8 params.layers=[gateloop,gateloop:parallel,learned_kernel,lru,softmax] params.repeats=1
bench_deer|configs/bench_deer.yaml|75|params.lengths=[10000,100000] params.hidden_sizes=[8,32,64,128] params.repeats=3 params.newton_max_jacobian_mb=16000|params.lengths=[50] params.hidden_sizes=[2] params.repeats=1
kt_mmd_rate|configs/kt_mmd_rate.yaml|65|params.sample_sizes=[1024,4096,16384,65536] params.dims=[2] params.methods=[iid,kt,kt_plus,compresspp] params.repeats=3 params.slope_range=[1024,65536]|params.sample_sizes=[16,64] params.datasets=[gaussian] params.dims=[2] params.methods=[iid,kt] params.repeats=1 params.slope_range=[16,64]
END_OF_RUNS

usage() {
  echo "usage: bash benchmarks/gpu.sh [--dry] OUT   (KSEQ_GPU_SMOKE=1 is the same as --dry)" >&2
  exit 2
}

smoke="${KSEQ_GPU_SMOKE:-0}"
if [ "${1:-}" = "--dry" ]; then
  smoke=1
  shift
fi
[ $# -eq 1 ] && [ -n "$1" ] || usage
OUT="$1"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || { echo "gpu.sh: cannot make $1" >&2; exit 2; }

cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-$(command -v python || command -v python3)}"

echo "== hardware"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
else
  echo "(no nvidia-smi)"
fi
"$PY" -c 'import jax; print("jax", jax.__version__, jax.default_backend(), jax.devices())'
echo "== mode: $([ "$smoke" = 1 ] && echo "smoke (tiny sizes)" || echo "profile")"

failed=()
start_all=$SECONDS
while IFS='|' read -r label config limit full small; do
  [ -n "$label" ] || continue
  if [ "$smoke" = 1 ]; then overrides=$small; else overrides=$full; fi
  read -r -a kvs <<<"$overrides"  # split on spaces, no globbing of the [..] values
  args=()
  for kv in ${kvs[@]+"${kvs[@]}"}; do args+=(--set "$kv"); done
  echo "== $label: $config ${overrides}"
  start=$SECONDS
  if command -v timeout >/dev/null 2>&1 && [ "$smoke" != 1 ]; then
    timeout -s INT -k 10 "$limit" "$PY" -m experiments.cli run "$config" ${args[@]+"${args[@]}"} \
      --out "$OUT" --quiet </dev/null
  else
    "$PY" -m experiments.cli run "$config" ${args[@]+"${args[@]}"} --out "$OUT" --quiet </dev/null
  fi
  rc=$?
  echo "== $label: exit $rc after $((SECONDS - start)) s"
  case $rc in
    0) ;;
    124 | 137) failed+=("$label (over its ${limit} s limit; its finished units are kept)") ;;
    *) failed+=("$label (exit $rc)") ;;
  esac
done <<<"$RUNS"

echo "== done in $((SECONDS - start_all)) s; results:"
find "$OUT" -name results.json | sort
if [ ${#failed[@]} -gt 0 ]; then
  echo "== failed: ${failed[*]}"
  exit 1
fi
echo "== all runs finished"
