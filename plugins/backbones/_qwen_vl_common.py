"""What the Qwen-VL backbone plugins (Qwen2.5-VL, Qwen3-VL, Qwen3.5) share: the chat prompt, the cell size
and the M-RoPE inputs that must reach the model's rope index."""

from __future__ import annotations

from typing import Any

import torch

from padt_core.backbone import BackboneBatch, image_slots

__all__ = ["QwenVLInputs"]


class QwenVLInputs:
    """Mixin for a ``Backbone`` whose ``hf_model`` is a Hugging Face Qwen-VL model (``model.visual``,
    ``config.vision_config``) and whose processor returns ``mm_token_type_ids`` / ``image_grid_thw``."""

    hf_model: Any
    tokenizer: Any
    patch_size: int
    merge: int

    @property
    def never_generate_ids(self) -> list[int]:
        # The processor's placeholders: a generated <|image_pad|> breaks the image-token count of the next pass.
        return self._token_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])

    @property
    def vision_hidden_size(self) -> int:
        return self.hf_model.config.vision_config.hidden_size

    @property
    def cell_size(self) -> int:
        return self.patch_size * self.merge

    def format_prompt(self, prompt: str, with_image: bool | int) -> str:
        # Several images: the chat template writes one vision block per image, where image_slots puts them.
        content: list[dict[str, str]] = [
            {"type": "image"} if piece is None else {"type": "text", "text": piece}
            for piece in image_slots(prompt, int(with_image))
        ]
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def vision_modules(self) -> list[torch.nn.Module]:
        return [self.hf_model.model.visual]

    def model_inputs(self, batch: BackboneBatch) -> dict[str, Any]:
        # mm_token_type_ids must reach the rope index: without it transformers silently falls back to 1-D positions.
        return {"mm_token_type_ids": batch["mm_token_type_ids"], "image_grid_thw": batch.get("image_grid_thw")}

    def extend_model_inputs(self, batch: BackboneBatch, new_tokens: torch.Tensor) -> dict[str, Any]:
        # Completion tokens (text or VRT) are text for M-RoPE: VRTs get 1-D positions, as in the reference.
        types = batch["mm_token_type_ids"]
        pad = torch.zeros(types.shape[0], new_tokens.shape[1], dtype=types.dtype, device=types.device)
        return {"mm_token_type_ids": torch.cat([types, pad], dim=1), "image_grid_thw": batch.get("image_grid_thw")}
