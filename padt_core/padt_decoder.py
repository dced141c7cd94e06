"""``PaDTDecoder``: a trunk plus the heads a recipe lists (the plugin interfaces: ``padt_core/decoder.py``).

It checks that the heads fit together when built, decodes every object of a batch at once, gives each
head's loss the objects that carry its targets, and merges the heads' post-processed outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .decoder_data import DecoderContext, DecoderInputs, DecoderOutputs
from .layout import Layout, get_layout
from .packing import _map_tensors, _take, _tensors
from .plugins import get_plugin

if TYPE_CHECKING:
    from .decoder import Head, Trunk
    from .objects import ObjectTargets
    from .recipe import DecoderConfig

__all__ = ["SKIPPED_PREFIX", "PaDTDecoder"]

#: Prefix of the loss entries that count, per head, the objects left out for lack of its targets.
SKIPPED_PREFIX = "skipped_"


class PaDTDecoder(nn.Module):
    """A trunk plus the heads a recipe lists.

    ``forward`` decodes every object of a batch at once, ``loss`` returns one float32 entry per loss
    term plus ``"total"``, and ``postprocess`` returns per object ``{head name: value}``, e.g.
    ``{"box": [x1, y1, x2, y2], "score": 0.93, "mask": bool array}`` in original-image pixels.
    """

    def __init__(
        self, trunk: Trunk, heads: Sequence[Head], layout: str | Layout = "raster", *, compile: bool = False
    ) -> None:
        super().__init__()
        names = [h.name for h in heads]
        if not names:
            raise ValueError("a decoder needs at least one head")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"decoder.heads lists {dupes} more than once")
        for head in heads:
            missing = [r for r in head.requires if r not in names]
            if missing:
                raise ValueError(f"head {head.name!r} needs head(s) {missing} in decoder.heads (has {names})")
            if head.needs_fine and trunk.vision_hidden_size is None:
                raise ValueError(
                    f"head {head.name!r} needs fine image features, but the backbone provides none "
                    f"(vision_hidden_size is None)"
                )
            if head.hidden_size != trunk.hidden_size:
                raise ValueError(f"head {head.name!r} has width {head.hidden_size}, trunk {trunk.hidden_size}")
        keys = [k for h in heads for k in h.loss_keys]
        clash = sorted({k for k in keys if keys.count(k) > 1 or k == "total" or k.startswith(SKIPPED_PREFIX)})
        if clash:
            raise ValueError(f"loss keys {clash} are claimed twice (or are reserved)")
        outputs = [k for h in heads for k in h.output_keys]
        clash = sorted({k for k in outputs if outputs.count(k) > 1 or k in ("label", "vrt")})
        if clash:
            owners = {k: [h.name for h in heads if k in h.output_keys] for k in clash}
            raise ValueError(f"output keys claimed twice (or reserved: label, vrt): {owners}")
        self.trunk = trunk
        self.heads = nn.ModuleDict({h.name: h for h in heads})
        self.layout = get_layout(layout)
        for part in (trunk, *heads):
            part.compile_training = compile

    @classmethod
    def from_config(cls, config: DecoderConfig, *, llm_hidden_size: int, vision_hidden_size: int | None) -> PaDTDecoder:
        """Build the trunk and heads named in a recipe's ``decoder`` section (looked up in the registry)."""
        layout = get_layout(config.layout)
        head_classes = [get_plugin("heads", h.name) for h in config.heads]
        trunk_cls = get_plugin("trunks", config.trunk.name)
        trunk = trunk_cls.from_config(
            config.trunk,
            llm_hidden_size=llm_hidden_size,
            vision_hidden_size=vision_hidden_size,
            num_queries=sum(c.num_queries for c in head_classes),
            reads_memory=any(c.reads_memory for c in head_classes),
            layout=layout,
        )
        heads = [c.from_config(h, hidden_size=trunk.hidden_size) for c, h in zip(head_classes, config.heads)]
        return cls(trunk, heads, layout, compile=config.compile)

    @property
    def reads_memory(self) -> bool:
        return any(h.reads_memory for h in self.heads.values())

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, inputs: DecoderInputs) -> DecoderOutputs:
        """Decode every object of ``inputs``; returns the heads' raw predictions by head name."""
        inputs.validate()
        if inputs.num_objects == 0:
            return self._forward_empty(inputs)
        ctx = DecoderContext.from_inputs(inputs, self.layout)
        return DecoderOutputs(self._predict(inputs, ctx), ctx)

    def _predict(self, inputs: DecoderInputs, ctx: DecoderContext) -> dict[str, Any]:
        queries = torch.cat([h.query for h in self.heads.values()], dim=0)
        out = self.trunk(queries, inputs, return_memory=self.reads_memory)
        ctx.memory = out.memory
        start = 0
        for name, head in self.heads.items():
            ctx.predictions[name] = head.predict(out.queries[:, start : start + head.num_queries], ctx)
            start += head.num_queries
        ctx.memory = None  # heads have read it; do not keep the per-object memory alive with the outputs
        return dict(ctx.predictions)

    def _forward_empty(self, inputs: DecoderInputs) -> DecoderOutputs:
        # Decode one dummy object so every parameter takes part in the graph (DDP and ZeRO-3 wait for
        # all of them), then return predictions with zero objects of the same trailing shapes.
        dummy = self.trunk.dummy_inputs(inputs.features[0].cell_size if inputs.features else 1)
        dummy_ctx = DecoderContext.from_inputs(dummy, self.layout)
        dummy_preds = self._predict(dummy, dummy_ctx)
        ctx = DecoderContext.from_inputs(inputs, self.layout)
        ctx.predictions = {k: _map_tensors(lambda t: t[:0], v) for k, v in dummy_preds.items()}
        outputs = DecoderOutputs(dict(ctx.predictions), ctx)
        outputs.dummy_predictions = dummy_preds  # read by loss()
        return outputs

    # --- loss ----------------------------------------------------------------------------------------
    def loss(
        self, outputs: DecoderOutputs, targets: ObjectTargets, inputs: DecoderInputs | None = None
    ) -> dict[str, torch.Tensor]:
        """Weighted float32 loss terms of every head, ``"total"`` (their sum) and per head
        ``"skipped_<name>"``: how many objects lacked one of its ``target_keys`` (left out of its loss).

        Each head's ``loss`` sees only the objects that carry its targets (``targets.select``,
        ``ctx.select``). A head none of whose objects does, and every head when there are zero
        objects, gives zeros that still depend on its parameters (DDP waits for every gradient).
        """
        ctx = outputs.context
        n = ctx.num_objects
        if inputs is not None and inputs.num_objects != n:
            raise ValueError(f"outputs hold {n} objects, inputs {inputs.num_objects}")
        targets.validate(n)
        losses: dict[str, torch.Tensor] = {}
        skipped: dict[str, int] = {}
        for name, head in self.heads.items():
            have = [targets.available(k, n) for k in head.target_keys]
            objects = [o for o in range(n) if all(col[o] for col in have)]
            skipped[name] = n - len(objects)
            if not objects:  # nothing to learn from: keep the head in the graph
                preds = outputs.dummy_predictions[name] if n == 0 else outputs[name]
                zero = sum(t.float().sum() for t in _tensors(preds)) * 0.0
                losses.update({k: zero for k in head.loss_keys})
                continue
            if len(objects) == n:
                terms = head.loss(outputs[name], targets, ctx)
            else:
                index = torch.tensor(objects, dtype=torch.long, device=ctx.grids.device)
                pred = _take(outputs[name], index)
                terms = head.loss(pred, targets.select(objects), ctx.select(objects))
            unknown = sorted(set(terms) - set(head.loss_keys))
            if unknown:
                raise ValueError(f"head {name!r} returned loss terms {unknown} not in its loss_keys")
            losses.update({k: v.float() for k, v in terms.items()})
        losses["total"] = sum(losses.values(), torch.zeros((), device=ctx.grids.device))
        # Host numbers (no device sync); every head always reports, so all ranks log the same keys.
        losses.update({f"{SKIPPED_PREFIX}{name}": torch.tensor(float(k)) for name, k in skipped.items()})
        return losses

    # --- post-processing -------------------------------------------------------------------------------
    def postprocess(self, outputs: DecoderOutputs, inputs: DecoderInputs | None = None) -> list[dict[str, Any]]:
        """Per object ``{output key: value}`` in original-image coordinates (the heads' ``output_keys``)."""
        ctx = outputs.context
        results: list[dict[str, Any]] = [{} for _ in range(ctx.num_objects)]
        for name, head in self.heads.items():
            values = head.postprocess(outputs[name], ctx)
            if len(values) != ctx.num_objects:
                raise ValueError(f"head {name!r} postprocessed {len(values)} values for {ctx.num_objects} objects")
            if len(head.output_keys) == 1:
                for res, value in zip(results, values):
                    res[head.output_keys[0]] = value
                continue
            for o, (res, value) in enumerate(zip(results, values)):
                if not isinstance(value, Mapping) or set(value) != set(head.output_keys):
                    got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                    raise ValueError(
                        f"head {name!r} declares output_keys {list(head.output_keys)} but postprocessed "
                        f"{got} for object {o}"
                    )
                res.update(value)
        return results
