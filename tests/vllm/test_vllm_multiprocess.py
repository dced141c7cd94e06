"""vLLM's default layout: the engine core and its worker in child processes, where padt's model class is
registered through the ``vllm.general_plugins`` entry point and the runner is wrapped (what ``vllm serve``
and a plain ``LLM()`` do). The other tests run vLLM in-process for speed; this one runs a child Python."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "vllm.sampling_params", reason="needs vLLM: bash tools/vllm_env.sh && .venv-vllm/bin/pytest -q tests/vllm"
)

HERE = Path(__file__).resolve().parent
SCRIPT = """
import json, sys
sys.path[:0] = [{tests!r}, {here!r}]
from helpers import noise_image
from vllm_helpers import padt_vrt_model

def main():
    model = padt_vrt_model(seed=2)
    images = [noise_image(h, w, seed=i) for i, (h, w) in enumerate([(84, 140), (168, 112), (56, 56)])]
    prompts = ["Find <|VRT_2|>.", "Where is it?", "hi"]
    hf = model.predict(images, prompts, max_new_tokens=12)
    from padt_plugins.engines.vllm import VLLMEngine
    with VLLMEngine(model, enforce_eager=True, max_num_batched_tokens=64, max_num_seqs=2, max_model_len=1024) as e:
        out = e.predict(images, prompts, max_new_tokens=12)
    print("RESULT " + json.dumps({{"hf": [p.ids for p in hf], "vllm": [p.ids for p in out],
                                  "boxes": [[o.box for o in p.objects] for p in hf],
                                  "vllm_boxes": [[o.box for o in p.objects] for p in out]}}))

if __name__ == "__main__":
    main()
"""


def test_engine_core_in_child_processes_gives_the_same_ids(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT.format(tests=str(HERE.parent), here=str(HERE)))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["vllm"] == result["hf"]
    assert any(result["boxes"])
    for a, b in zip(result["boxes"], result["vllm_boxes"]):
        assert len(a) == len(b)
        for box_a, box_b in zip(a, b):
            assert box_a == pytest.approx(box_b, abs=1e-3)
