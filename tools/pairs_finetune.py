"""Train ``tiny_shapes_pairs`` starting from a trained single-image ``tiny_shapes_pretrained`` model.

The two-image recipe has the single-image recipe's architecture plus ``vrt.max_images`` (one new,
zero-initialised table): the weights of a trained single-image model load into it, the image-place
embedding starts at zero, and training continues on the pairs (docs/multi-image.md, "Trained").
The source directory is only read.

Usage::

    python tools/pairs_finetune.py SOURCE_MODEL_DIR OUT_DIR [key.sub=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import load_file
from transformers import set_seed

from padt_core.model import PaDTModel
from padt_core.recipe import load_recipe
from padt_core.train.collator import PaDTCollator
from padt_core.train.dataset import SampleDataset
from padt_core.train.run import apply_freezing, load_readers
from padt_core.train.trainer import PaDTTrainer, training_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a saved single-image model directory (tiny_shapes_pretrained)")
    parser.add_argument("out", help="output directory of the two-image model")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of recipes/tiny_shapes_pairs.yaml")
    args = parser.parse_args()
    spec = load_recipe("tiny_shapes_pairs", args.overrides)
    readers, _ = load_readers(spec.data.train, spec.data.templates)
    train_set = SampleDataset(readers, seed=spec.train.seed, task_weights=spec.data.task_weights)
    set_seed(spec.train.seed)
    model = PaDTModel.from_recipe(spec)
    missing, unexpected = model.load_state_dict(load_file(str(Path(args.source) / "model.safetensors")), strict=False)
    new = [k for k in missing if "image_embed" not in k]
    if new or unexpected:
        raise SystemExit(f"{args.source} does not fit tiny_shapes_pairs: missing {new}, unexpected {unexpected}")
    apply_freezing(model, spec)
    collator = PaDTCollator(
        model,
        vrt_per_object=spec.train.vrt_per_object,
        vrt_sampling=spec.train.vrt_sampling,
        coverage=spec.data.coverage,
        seed=spec.train.seed,
        templates=spec.data.templates,
    )
    out = Path(args.out)
    trainer = PaDTTrainer(
        model=model, args=training_arguments(spec.train, str(out)), train_dataset=train_set, data_collator=collator
    )
    trainer.train()
    model.save_pretrained(out, overwrite=True)
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    print(f"{out}: {trainer.state.global_step} steps, skipped {dict(collator.skipped)}")


if __name__ == "__main__":
    main()
