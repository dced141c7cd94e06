#!/usr/bin/env bash
# The benchmark suite on a lent GPU machine (bare image: PyTorch there, our other needs carried as
# wheels in .whl/, see docs/performance.md). Writes JSON into $OUT. Usage: bash tools/device_bench.sh [3b|3b-compile|compile]
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/padt . || exit 1
export PYTHONPATH=/tmp/padt:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
R=$PWD/recipes
run() { local name=$1; shift; echo "== $name"; timeout "${STEP_TIMEOUT:-150}" bash -c "cd /tmp && python3 -m padt_core $*" > "$OUT/$name.json" || echo "FAILED: $name"; python3 - "$OUT/$name.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("  (no JSON)", e); sys.exit()
keys = ("ratio", "speedup_100", "growth_100_over_10", "peak_mem_mb")
print("  ", {k: d[k] for k in keys if k in d}, {k: d[k].get("step_ms") for k in ("padt", "plain") if k in d})
PY
}
WIDE="backbone.config.text_config.hidden_size=1024 backbone.config.text_config.intermediate_size=2816
 backbone.config.text_config.num_hidden_layers=8 backbone.config.text_config.num_attention_heads=16
 backbone.config.text_config.num_key_value_heads=4 backbone.config.text_config.rope_parameters.mrope_section=[8,12,12]
 backbone.config.vision_config.hidden_size=256 backbone.config.vision_config.intermediate_size=1024
 backbone.config.vision_config.depth=4 backbone.config.vision_config.out_hidden_size=1024
 decoder.trunk.hidden_size=256 decoder.trunk.intermediate_size=684 decoder.trunk.num_heads=4"
if [ "${1:-}" = "compile" ]; then
  # eager vs decoder.compile on one warm card (bf16): the tiny recipe and the ~100 M-parameter widths
  for c in false true; do
    STEP_TIMEOUT=200 run train_bf16_compile_$c bench train --recipe $R/tiny_qwen_shapes.yaml --device cuda --dtype bfloat16 --steps 20 decoder.compile=$c
    STEP_TIMEOUT=200 run train_wide_bf16_compile_$c bench train --recipe $R/tiny_qwen_shapes.yaml --device cuda --dtype bfloat16 --steps 20 decoder.compile=$c $(echo $WIDE)
  done
  exit
fi
if [ "${1:-}" = "3b" ] || [ "${1:-}" = "3b-compile" ]; then
  [ "${1:-}" = "3b-compile" ] && set -- 3b compile
  # Qwen2.5-VL-3B widths and depths (random weights, the tiny tokenizer's vocabulary), reference decoder
  QWEN3B="backbone.config.text_config.hidden_size=2048 backbone.config.text_config.intermediate_size=11008
   backbone.config.text_config.num_hidden_layers=36 backbone.config.text_config.num_attention_heads=16
   backbone.config.text_config.num_key_value_heads=2 backbone.config.text_config.rope_parameters.mrope_section=[16,24,24]
   backbone.config.vision_config.hidden_size=1280 backbone.config.vision_config.intermediate_size=3420
   backbone.config.vision_config.num_heads=16 backbone.config.vision_config.depth=32
   backbone.config.vision_config.fullatt_block_indexes=[7,15,23,31] backbone.config.vision_config.out_hidden_size=2048
   decoder.trunk.hidden_size=1280 decoder.trunk.intermediate_size=3420 decoder.trunk.num_heads=16"
  if [ "${2:-}" = "compile" ]; then  # dense memory (what compiles), eager vs decoder.compile
    for c in false true; do
      STEP_TIMEOUT=240 run train_3b_bf16_dense_compile_$c bench train --recipe $R/tiny_qwen_shapes.yaml --device cuda --dtype bfloat16 --steps 10 $(echo $QWEN3B) decoder.trunk.memory=dense decoder.compile=$c
    done
    exit
  fi
  STEP_TIMEOUT=290 run train_3b_bf16 bench train --recipe $R/tiny_qwen_shapes.yaml --device cuda --dtype bfloat16 --steps 10 $(echo $QWEN3B)
  exit
fi
run train_bf16 bench train --recipe $R/tiny_qwen_shapes.yaml --device cuda --dtype bfloat16 --steps 20
run train_fp32 bench train --recipe $R/tiny_qwen_shapes.yaml --device cuda --steps 20
# the same comparison at a width where the GPU computes rather than waits on the host (~100 M parameters)
run train_wide_bf16 bench train --recipe $R/tiny_qwen_shapes.yaml --device cuda --dtype bfloat16 --steps 20 $(echo $WIDE)
run generate_tiny_qwen_bf16 bench generate --recipe $R/tiny_qwen.yaml --device cuda --dtype bfloat16 --repeats 10
run generate_tiny_llava_bf16 bench generate --recipe $R/tiny_llava.yaml --device cuda --dtype bfloat16 --repeats 10
run decoder_bf16 bench decoder --device cuda --dtype bfloat16
echo "== profile (cuda, bf16)"
timeout 120 python3 tools/profile_train_step.py --device cuda --dtype bfloat16 --rows 15 2>&1 | grep -v -E "USDT|^\s*$" | cut -c1-150 | tail -45
