"""One training step's losses: robust per-token CE over the completion + every decoder head's loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["compute_losses", "token_loss"]


def token_loss(
    logits: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    vrt_ignore: torch.Tensor | None,
    vocab_rows: int,
    normalisation: str = "per_sample",
) -> torch.Tensor:
    """Next-token CE over the completion, in float32.

    ``logits`` are the completion-predicting positions ``[B, Lc, V + P]``. Where ``vrt_ignore[b, t, k]``
    is set, VRT ``k`` is removed from the softmax at that position: another foreground cell of the
    same object is not a wrong answer (robust CE). ``per_sample`` averages each sample's tokens first
    (the reference), ``per_token`` averages all tokens of the batch.
    """
    logits = logits.float()
    if vrt_ignore is not None and vrt_ignore.any():
        width = logits.shape[-1] - vocab_rows
        ignore = vrt_ignore[..., :width]
        pad = torch.zeros(*ignore.shape[:-1], vocab_rows, dtype=torch.bool, device=ignore.device)
        logits = logits.masked_fill(torch.cat([pad, ignore], dim=-1), torch.finfo(logits.dtype).min)
    ce = F.cross_entropy(logits.flatten(0, 1), completion_ids.flatten(), reduction="none").view_as(completion_ids)
    mask = completion_mask.to(ce.dtype)
    ce = ce * mask
    if normalisation == "per_token":
        return ce.sum() / mask.sum().clamp_min(1.0)
    return (ce.sum(1) / (mask.sum(1) + 1e-4)).mean()


def compute_losses(model, batch: dict[str, Any], step: int = 0, forward=None) -> dict[str, torch.Tensor]:
    """All losses of a batch from :class:`~padt_core.train.collator.PaDTCollator`; ``"loss"`` is the total.

    ``forward`` is the callable that runs the model (a DDP/FSDP wrapper of ``model`` when distributed).
    """
    forward = forward if forward is not None else model
    train = model.recipe.train
    prompt = batch["prompt"]
    completion = batch["completion_ids"]
    length = completion.shape[1]
    out = forward(prompt, completion, completion_mask=batch["completion_mask"], logits_to_keep=length + 1)
    logits = out.logits[:, :length]  # position t predicts completion token t
    losses = {
        "token": token_loss(
            logits,
            completion,
            batch["completion_mask"],
            batch["vrt_ignore"] if train.robust_vrt_ce else None,
            model.backbone.vocab_rows,
            train.token_loss,
        )
    }
    total = train.token_loss_weight * losses["token"]
    if model.decoder is not None:
        decoder_losses = _decoder_losses(model, batch, out, warmup=step < train.prototype_warmup_steps)
        total = total + decoder_losses.pop("total")
        losses.update(decoder_losses)
    losses["loss"] = total
    return losses


def _random_prefix(states: torch.Tensor, cells: torch.Tensor, counts: torch.Tensor, keep_n: torch.Tensor | None):
    """Keep the first 1..K_o of each object's VRTs; targets are drawn in random order, so a prefix is a
    random subset. ``keep_n`` comes from the collator (drawn per sample); without it, from the global RNG."""
    if keep_n is None:
        keep_n = (torch.rand(counts.shape, device=counts.device) * counts).floor().long() + 1
    keep_n = keep_n.to(counts.device)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(cells.numel(), device=counts.device) - torch.repeat_interleave(starts, counts)
    keep = rank < torch.repeat_interleave(keep_n, counts)
    return states[keep], cells[keep], keep_n


def _decoder_losses(model, batch, out, warmup: bool) -> dict[str, torch.Tensor]:
    from ..decoder import DecoderInputs, ObjectTargets

    encoded = out.encoded
    counts = batch["obj_counts"]
    image_of_sample = torch.tensor(encoded.image_index, device=counts.device)
    obj_image = image_of_sample[batch["obj_sample"]] if counts.numel() else counts
    cells = batch["obj_cells"]
    if warmup:
        # Early on the LLM's states are noise; the decoder learns from the emitted cells' prototypes.
        vrt_image = obj_image.repeat_interleave(counts)
        flat = torch.cat(encoded.prototypes) if encoded.prototypes else out.hidden_states.new_zeros(0, 1)
        offsets = torch.tensor([0] + [p.shape[0] for p in encoded.prototypes], device=counts.device).cumsum(0)
        states = flat[offsets[vrt_image] + cells] if cells.numel() else out.hidden_states.new_zeros(0, flat.shape[-1])
    else:
        rows = batch["obj_sample"].repeat_interleave(counts)
        states = out.hidden_states[rows, batch["obj_positions"]]  # the state that emitted each VRT
    if model.recipe.train.decoder_cell_subsets and counts.numel():
        states, cells, counts = _random_prefix(states, cells, counts, batch.get("obj_keep"))
    inputs = DecoderInputs(
        features=encoded.features,
        prototypes=encoded.prototypes,
        image_index=obj_image,
        vrt_states=states,
        vrt_cells=cells,
        counts=counts,
        original_sizes=batch["original_sizes"],
    )
    targets = ObjectTargets(boxes=batch["obj_boxes"], masks=batch["obj_masks"])
    return model.decoder.loss(model.decoder(inputs), targets, inputs)
