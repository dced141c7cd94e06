"""Helpers shared by the Hugging Face based backbone plugins: hub loading, inline-config checks, seeding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from padt_core.backbone import HubUnreachableError

ASSETS = Path(__file__).parent / "assets"

__all__ = [
    "ASSETS",
    "fill_generation_defaults",
    "hub_reachable",
    "load_from_hub",
    "resolve_builtin_path",
    "restore_generation_config",
    "seeded",
    "unknown_config_keys",
]


def unknown_config_keys(reference: Any, given: dict, prefix: str = "") -> list[str]:
    """Keys of an inline HF config that the config does not know (typos); sub-configs recursively."""
    unknown = []
    subs = getattr(reference, "sub_configs", {}) or {}
    for key, value in given.items():
        if key == "model_type":
            continue
        if not hasattr(reference, key) and key not in subs:
            unknown.append(prefix + key)
        elif isinstance(value, dict) and key in subs:
            sub_type = value.get("model_type")
            current = getattr(reference, key, None)
            if sub_type is not None:
                current = AutoConfig.for_model(sub_type)
            if current is not None:
                unknown += unknown_config_keys(current, value, prefix + key + ".")
    return unknown


def resolve_builtin_path(spec: str) -> str:
    if spec.startswith("builtin:"):
        path = ASSETS / spec.removeprefix("builtin:")
        if not path.is_dir():
            known = sorted(p.name for p in ASSETS.iterdir() if p.is_dir())
            raise FileNotFoundError(f"no built-in processor {spec!r}; available: {', '.join(known)}")
        return str(path)
    return spec


HUB_CHECK_TIMEOUT = 5.0  # seconds one HEAD request to the hub may take before we call it unreachable
_hub_reachable: bool | None = None  # the answer, once per process


def hub_reachable() -> bool:
    """Whether the Hugging Face hub answers one quick request (``False`` under ``HF_HUB_OFFLINE``).

    Asked once per process: without it, every ``from_pretrained`` of a model that is not cached retries
    with back-off for ~30 s before failing (2.5 min for one backbone offline). Any HTTP answer counts
    as reachable; the request goes through the hub library's own session (its proxies and endpoint).
    """
    global _hub_reachable
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if _hub_reachable is None:
        from huggingface_hub.utils import get_session

        try:
            get_session().head(constants.ENDPOINT, timeout=HUB_CHECK_TIMEOUT)
            _hub_reachable = True
        except Exception:  # DNS, connect, TLS, proxy, timeout: all mean "not reachable"
            _hub_reachable = False
    return _hub_reachable


@contextmanager
def _hub_offline() -> Iterator[None]:
    """The hub library's offline mode for the duration of one load (the hub does not answer anyway)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def load_from_hub(loader, spec: str, *args, what: str = "", hint: str | None = None, **kwargs):
    """``loader(spec)`` with an error that says what to do when the hub cannot be reached.

    When the hub does not answer (:func:`hub_reachable`), ``loader`` runs in the hub library's offline
    mode (what ``HF_HUB_OFFLINE=1`` sets; transformers and timm read it at call time): a cached model
    still loads and a missing one fails at once instead of retrying with back-off.
    """
    offline = not Path(spec).exists() and not hub_reachable()
    try:
        with _hub_offline() if offline else nullcontext():
            return loader(spec, *args, **kwargs)
    except OSError as err:
        if Path(spec).exists():
            raise
        hint = hint or (
            f"Download it on a connected machine (`hf download {spec} --local-dir DIR`) and point the recipe "
            f"at that local directory{what}."
        )
        raise HubUnreachableError(
            f"could not load {spec!r}: the Hugging Face hub cannot be reached from here or the id is wrong "
            f"({type(err).__name__}: {(str(err).splitlines() or [''])[0]}). {hint}"
        ) from err


def fill_generation_defaults(model, tokenizer) -> None:
    gen = model.generation_config
    if gen.eos_token_id is None:
        gen.eos_token_id = [tokenizer.eos_token_id]
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def restore_generation_config(model, directory: str) -> None:
    """Use the ``generation_config.json`` a saved model directory holds (what ``Backbone.save`` wrote)."""
    from transformers import GenerationConfig

    if (Path(directory) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(directory)


def seeded(seed: int, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()
