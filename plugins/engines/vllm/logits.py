"""padt's ``no_repeat_vrt`` as a vLLM v1 logits processor (per request, through ``SamplingParams.extra_args``).

The per-request function runs padt's own :class:`padt_plugins.generation.no_repeat_vrt.NoRepeatVRT` on
the request's prompt + output ids, so a VRT run is cut exactly as in Hugging Face generation.
"""

from __future__ import annotations

import torch
from padt_plugins.generation.no_repeat_vrt import NoRepeatVRT
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

__all__ = ["EXTRA_KEY", "NoRepeatVRTProcessor"]

EXTRA_KEY = "padt_no_repeat_vrt"  # extra_args[EXTRA_KEY] = {"vocab_rows": V, "max_run": int | None}


class NoRepeatVRTProcessor(AdapterLogitsProcessor):
    """Applies to the requests whose ``extra_args`` carry :data:`EXTRA_KEY`."""

    def is_argmax_invariant(self) -> bool:
        return False  # it forbids the favourite cell: greedy picks change

    def new_req_logits_processor(self, params):
        spec = (params.extra_args or {}).get(EXTRA_KEY)
        if spec is None:
            return None
        rule = NoRepeatVRT(int(spec["vocab_rows"]), spec.get("max_run"))

        def apply(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            ids = torch.tensor([list(prompt_ids) + list(output_ids)], dtype=torch.long, device=logits.device)
            return rule(ids, logits.unsqueeze(0)).squeeze(0)

        return apply
