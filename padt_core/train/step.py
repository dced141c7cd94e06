"""One training step's losses: robust per-token CE over the completion + every decoder head's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..objects import ObjectBatch, pack_objects
from .batch import TrainBatch

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


def compute_losses(model, batch: TrainBatch, step: int = 0, forward=None) -> dict[str, torch.Tensor]:
    """All losses of a batch from :class:`~padt_core.train.collator.PaDTCollator`; ``"loss"`` is the total.

    The decoder's entries include ``skipped_<head>``: objects of the batch a head learned nothing
    from because their annotations lack one of its ``target_keys`` (counts, not losses).
    ``forward`` is the callable that runs the model (a DDP/FSDP wrapper of ``model`` when distributed).
    """
    forward = forward if forward is not None else model
    train = model.recipe.train
    completion = batch.completion_ids
    length = completion.shape[1]
    out = forward(batch.prompt, completion, completion_mask=batch.completion_mask, logits_to_keep=length + 1)
    logits = out.logits[:, :length]  # position t predicts completion token t
    losses = {
        "token": token_loss(
            logits,
            completion,
            batch.completion_mask,
            batch.vrt_ignore if train.robust_vrt_ce else None,
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


def _random_prefix(objects: ObjectBatch) -> ObjectBatch:
    """Keep the first 1..K_o of each object's VRTs: how many the collator drew (per sample, so a
    resumed or data-parallel run draws the same), or, without its draw, from the global RNG."""
    keep = objects.keep
    if keep is None:
        keep = (torch.rand(objects.counts.shape, device=objects.counts.device) * objects.counts).floor().long() + 1
    return objects.prefix(keep)


def _decoder_losses(model, batch: TrainBatch, out, warmup: bool) -> dict[str, torch.Tensor]:
    objects = batch.objects
    if model.recipe.train.decoder_cell_subsets and objects.num_objects:
        objects = _random_prefix(objects)
    # Early on (warm-up) the LLM's states are noise; the decoder learns from the emitted cells' prototypes.
    inputs = pack_objects(objects, out.encoded, out.hidden_states, batch.original_sizes, from_prototypes=warmup)
    return model.decoder.loss(model.decoder(inputs), objects.targets, inputs)
