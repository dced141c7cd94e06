"""Example images for the page: a few scenes of the ``shapes`` dataset plugin, with a REC sentence and OVD
labels each, so the page works on first open. Made through the plugin registry (the core imports no plugin)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Example", "shapes_examples"]


@dataclass(frozen=True)
class Example:
    """One preloaded image and the queries the page offers with it."""

    name: str
    png: bytes
    sentence: str  # a referring expression of one of its objects (task rec)
    labels: tuple[str, ...]  # the kinds of shape it shows (task ovd)


def shapes_examples(count: int = 3, seed: int = 0) -> list[Example]:
    """``count`` validation scenes of the shapes generator (``easy``: colour + shape sentences).

    Returns an empty list when no ``shapes`` dataset plugin is installed.

    Example:
        >>> [e.sentence for e in shapes_examples(2)]
        ['the yellow diamond', 'the blue diamond']
    """
    from ..data.templates import DEFAULT_TEMPLATES
    from ..plugins import UnknownPluginError, get_plugin

    try:
        reader = get_plugin("datasets", "shapes")
    except UnknownPluginError:
        return []
    root = Path(tempfile.mkdtemp(prefix="padt-serve-examples-"))
    try:
        config = reader.Config(
            root=str(root), split="val", tasks=["rec", "ovd"], n_train=0, n_val=count, seed=seed, difficulty="easy"
        )
        dataset = reader(config, DEFAULT_TEMPLATES)
        samples = [dataset[i] for i in range(len(dataset))]
        examples = []
        for image in sorted({s.image for s in samples}):
            rec = [s for s in samples if s.image == image and s.task == "rec"]
            ovd = [s for s in samples if s.image == image and s.task == "ovd"]
            if not rec or not ovd:
                continue
            labels = tuple(dict.fromkeys(obj.label for obj in ovd[0].objects))
            sentence = rec[0].objects[0].label
            examples.append(Example(Path(image).name, Path(image).read_bytes(), sentence, labels))
        return examples
    finally:
        shutil.rmtree(root, ignore_errors=True)
