#!/usr/bin/env bash
# Everything measured on a GPU, in one go (one lease of a GPU machine): the allocation alone (select), where a
# step's time goes and which lines sync (profile), the throughput of issue 14's three shapes against sparsify,
# the CUDA tests (SAE kernels, the small top-m kernel, the IOI harness, routing), the end-to-end pipeline. Logs go to DIR (default gpu-check/), one .txt per section.
#
#     bash bench/gpu_check.sh [DIR]     # SKIP="select pipeline" leaves sections out; STEPS, ROWS, PROFILES: see below
#
# Needs torch with CUDA, triton, transformer_lens and (for the side-by-side) eai-sparsify importable.
set -u
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
py=${PYTHON:-python3}
steps=${STEPS:-60}
rows=${ROWS:-floor16 ours ours-triton sparsify fc fc-triton mc mc-triton}  # bench/sae_throughput.py --only
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
  $py -c "import transformer_lens, sparsify; print('transformer_lens and sparsify import')"
} >"$out/env.txt" 2>&1
section() {  # name timeout command...
  local name=$1 limit=$2
  shift 2
  case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped"; return;; esac
  echo "== $name ($(date -u +%T))"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  echo "   rc $? ($(date -u +%T))"
  tail -n 40 "$out/$name.txt"
}
cat "$out/env.txt"
section select 100 $py bench/sae_select.py --device cuda
prof="$py bench/sae_profile.py --device cuda --rows 15 --syncs"
section profile 100 bash -c "${PROFILES:-$prof; $prof --arch feature-choice; $prof --arch mutual-choice; \
  $prof --d-in 2048 --d-sae 65536 --k 64 --batch 8192}"
section throughput 170 $py bench/sae_throughput.py --device cuda --shapes issue \
  --only $rows --steps "$steps"
section tests 170 $py -m pytest -q -p no:cacheprovider -rs tests/sae/test_cuda.py tests/sae/test_kernels.py \
  tests/workbench/test_topk_small.py tests/evals/test_cuda.py tests/routing/test_cuda.py
section pipeline 110 $py bench/sae_pipeline.py --device cuda --steps 60
