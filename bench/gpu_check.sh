#!/usr/bin/env bash
# Everything issue 14 measures on a GPU, in one go (one lease of a GPU machine): the CUDA tests, the
# throughput of the issue's three shapes against sparsify, where a step's time goes, and the end-to-end
# pipeline. Logs go to DIR (default gpu-check/): env, throughput, tests-sae, pipeline, profile, tests-routing (.txt)
#
#     bash bench/gpu_check.sh [DIR]
#
# Needs torch with CUDA, triton, transformer_lens and (for the side-by-side) eai-sparsify importable.
set -u
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
py=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
  $py -c "import transformer_lens, sparsify; print('transformer_lens and sparsify import')"
} >"$out/env.txt" 2>&1
section() {  # name timeout command...   (SKIP="profile tests-routing" leaves sections out)
  local name=$1 limit=$2
  shift 2
  case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped"; return;; esac
  echo "== $name ($(date -u +%T))"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  echo "   rc $? ($(date -u +%T))"
  tail -n 40 "$out/$name.txt"
}
cat "$out/env.txt"
section throughput 200 $py bench/sae_throughput.py --device cuda --shapes issue \
  --only floor floor16 ours ours-fp32 ours-triton sparsify fc mc --steps 60
section tests-sae 130 $py -m pytest -q -p no:cacheprovider -rs tests/sae/test_cuda.py tests/sae/test_kernels.py
section pipeline 110 $py bench/sae_pipeline.py --device cuda --steps 60
prof="$py bench/sae_profile.py --device cuda --rows 20"
section profile 120 bash -c "$prof; $prof --d-in 2048 --d-sae 65536 --k 64 --batch 8192; \
  $prof --arch feature-choice; $prof --arch mutual-choice"
section tests-routing 100 $py -m pytest -q -p no:cacheprovider -rs tests/routing/test_cuda.py
