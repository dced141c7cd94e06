"""Every bad input of issue 18's table is one ``padt: error: …`` line with exit status 2 (and the rows that
already passed, so they stay so); bad images in evaluation are skipped and counted, not fatal.

The CLI runs in-process (``padt_core.cli.main``), as in ``tests/test_cli.py``.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import noise_image
from PIL import Image

from padt_core.cli import main
from padt_core.data.image import MAX_PIXELS_ENV

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """``padt ARGV`` in-process: ``(exit status, stdout, stderr)``; argparse's own errors exit too."""
    try:
        code = main(argv)
    except SystemExit as done:
        code = int(done.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width x height`` but holds no pixel data (what a decompression bomb looks like
    to a header check, without writing gigabytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def truncated_png(path: Path, height: int = 56, width: int = 56) -> Path:
    noise_image(height, width, seed=3).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """The inputs the table names: good, truncated, huge, very wide, not an image, a directory, broken json..."""
    root = tmp_path_factory.mktemp("bad_input")
    noise_image(56, 84).save(root / "good.png")
    Image.fromarray(np.full((10, 5000, 3), 128, np.uint8)).save(root / "wide.png")
    (root / "folder.png").mkdir()
    (root / "notes.png").write_text("not an image\n")
    truncated_png(root / "truncated.png")
    png_header(root / "huge.png", 15000, 15000)
    (root / "extends.yaml").write_text("extends: no_such_parent.yaml\nname: child\n")
    (root / "broken.json").write_text('[{"id": 1, "image": "good.png",\n  "task": "ovd",, }]\n')
    section = {"name": "padt_json", "path": str(root / "broken.json"), "image_dir": str(root)}
    (root / "broken_data.yaml").write_text(yaml.safe_dump(section))
    (root / "run").mkdir()
    (root / "run" / "model.safetensors").write_bytes(b"")
    (root / "report.json").write_text("{}")
    (root / "typo.yaml").write_text(yaml.safe_dump({"extends": "tiny_qwen", "vrt": {"rnak": 3}}))
    return {"root": str(root), **{p.stem: str(p) for p in root.iterdir() if p.suffix in (".png", ".yaml", ".json")}}


PREDICT = ["predict", "tiny_qwen", "--prompt", "Find it.", "--max-new-tokens", "2"]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# (argv with {name} = files[name], key words the error line must hold)
ROWS = {
    # --- issue 18's table ---
    "predict-batch-size-negative": (
        [*PREDICT, "--image", "{good}", "--batch-size", "-1"],
        ["--batch-size", "positive integer", "-1"],
    ),
    "predict-batch-size-zero": ([*PREDICT, "--image", "{good}", "--batch-size", "0"], ["--batch-size", "positive"]),
    "predict-image-is-a-directory": ([*PREDICT, "--image", "{folder}"], ["{folder}", "is a directory"]),
    "predict-image-15000x15000": (
        [*PREDICT, "--image", "{huge}"],
        ["{huge}", "15000x15000", "limit of 178,956,970", MAX_PIXELS_ENV],
    ),
    "predict-image-5000x10": ([*PREDICT, "--image", "{wide}"], ["{wide}", "5000x10", "aspect ratio"]),
    "predict-truncated-image": ([*PREDICT, "--image", "{truncated}"], ["cannot read image", "{truncated}"]),
    "predict-not-an-image": ([*PREDICT, "--image", "{notes}"], ["cannot read image", "{notes}"]),
    "predict-device-foo": (
        [*PREDICT, "--image", "{good}", "--device", "foo"],
        ["--device 'foo'", "not a torch device"],
    ),
    "predict-device-cuda-without-gpu": (
        [*PREDICT, "--image", "{good}", "--device", "cuda"],
        ["--device cuda", "no CUDA GPU"],
    ),
    "eval-device-cuda-without-gpu": (
        ["eval", "tiny_qwen", "--out", "{root}/r.json", "--device", "cuda"],
        ["--device cuda", "no CUDA GPU"],
    ),
    "override-past-list-end": (
        ["recipe", "validate", "tiny_qwen_shapes", "data.train.5.root=x"],
        ["data.train.5.root", "1 item", "indices 0 to 0"],
    ),
    "override-into-a-scalar": (["recipe", "validate", "tiny_qwen", "vrt.rank.x=3"], ["vrt.rank.x", "not a section"]),
    "missing-extends-target": (
        ["recipe", "validate", "{extends}"],
        ["{extends}", "extends: no_such_parent.yaml", "Bundled recipes"],
    ),
    "malformed-annotation-json": (
        ["eval", "tiny_qwen", "--data", "{broken_data}", "--out", "{root}/r.json"],
        ["{broken}", "not valid JSON", "line 2, column"],
    ),
    "eval-task-bogus": (
        ["eval", "tiny_qwen", "--task", "bogus", "--out", "{root}/r.json"],
        ["'bogus'", "rec", "res", "ovd", "ric"],
    ),
    "prompt-with-image-pad": (
        ["predict", "tiny_qwen", "--image", "{good}", "--prompt", "Find <|image_pad|> it."],
        ["<|image_pad|>", "special token"],
    ),
    "prompt-vrt-past-the-grid": (
        ["predict", "tiny_qwen", "--image", "{good}", "--prompt", "What is <|VRT_999|>?"],
        ["<|VRT_999|>", "2x3 VRT grid", "<|VRT_5|>"],
    ),
    # --- rows that already passed before issue 18 ---
    "recipe-typo": (["recipe", "validate", "{typo}"], ["{typo}", "rnak"]),
    "recipe-missing-file": (["recipe", "validate", "{root}/nope.yaml"], ["nope.yaml", "neither a file"]),
    "override-syntax": (["recipe", "validate", "tiny_qwen", "vrt.rank"], ["key.sub=value"]),
    "override-bad-value": (["recipe", "validate", "tiny_qwen", "vrt.rank=-3"], ["vrt.rank", "override"]),
    "predict-missing-image": ([*PREDICT, "--image", "{root}/nope.png"], ["image file not found", "nope.png"]),
    "train-no-overwrite": (
        ["train", "tiny_qwen_shapes", "--output-dir", "{root}/run"],
        ["{root}/run", "--overwrite", "--resume"],
    ),
    "eval-no-overwrite": (["eval", "tiny_qwen", "--out", "{report}"], ["{report}", "--overwrite"]),
    "eval-missing-data": (["eval", "tiny_qwen", "--data", "{root}/nope.yaml", "--out", "{root}/r.json"], ["nope.yaml"]),
}


@pytest.mark.parametrize(
    ("argv", "words"),
    [pytest.param(*row, id=name, marks=NO_GPU if "cuda" in name else ()) for name, row in ROWS.items()],
)
def test_bad_input_is_one_line_with_exit_status_2(capsys, files, argv, words):
    code, _, err = run(capsys, [arg.format(**files) for arg in argv])
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if err.startswith("usage: "):  # argparse's own check: its usage, then one error line
        lines = lines[-1:]
        assert ": error: argument" in lines[0]
    else:
        assert err.startswith("padt: error: ")
        if "invalid recipe:" not in err:  # a recipe's validation lists one line per invalid key
            assert len(lines) == 1, err
    for word in words:
        assert word.format(**files) in "\n".join(lines), err


def _good_and_truncated(folder: Path, json_name: str) -> dict:
    """A good and a truncated image with one REC record each; the padt_json section reading them."""
    noise_image(56, 56).save(folder / "good.png")
    truncated_png(folder / "bad.png")
    records = [
        {
            "id": i,
            "image": name,
            "task": "refering",
            "conversations": [{"from": "human", "value": "<image>Find the thing."}],
            "answer_template": 'The "thing" refers to <|Obj_0|> in this image.',
            "objects": [{"bbox": [0.1, 0.1, 0.6, 0.6], "label": "thing"}],
        }
        for i, name in enumerate(["good.png", "bad.png"])
    ]
    (folder / json_name).write_text(json.dumps(records))
    return {"name": "padt_json", "path": str(folder / json_name), "image_dir": str(folder)}


def test_eval_skips_a_truncated_image_and_counts_it(capsys, tmp_path):
    """One truncated val image (readers' default ``check_images: header`` lets it through): skipped,
    counted by reason in the report, and the report is still written."""
    section = _good_and_truncated(tmp_path, "val.json")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(section))
    out = tmp_path / "report.json"
    with pytest.warns(UserWarning, match="bad.png"):
        code, _, err = run(
            capsys,
            ["eval", "tiny_qwen", "--data", str(tmp_path / "data.yaml"), "--out", str(out), "--max-new-tokens", "2"],
        )
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["skipped"] == {"corrupt_image": 1}
    assert report["eval"]["samples"] == {"rec": 1}


@pytest.mark.parametrize("workers", [0, 1])
def test_training_summary_counts_collator_skips_from_dataloader_workers(tmp_path, workers):
    """A truncated image passes the readers' header check and is dropped by the collator: the summary counts
    it whether the collator ran in this process or in a DataLoader worker (which has its own counter)."""
    from padt_core.train.run import train

    section = _good_and_truncated(tmp_path, "train.json")
    overrides = {"data.train": [section], "data.val": [], "train.batch_size": 2, "train.max_steps": 2}
    overrides.update({"train.num_workers": workers, "train.save_steps": 100, "train.sampling": "random"})
    summary = train("tiny_qwen", overrides, output_dir=tmp_path / "run")
    assert summary["skipped"] == {"corrupt_image": 2}  # one per step: each batch of 2 holds the bad image


def test_training_summary_counts_every_skip_by_reason(tmp_path):
    """Readers count while reading; ``load_readers`` (what the summary adds up) reads them first, so
    missing images, empty boxes and unknown categories all reach the summary, each under its reason."""
    from padt_core.recipe import load_recipe
    from padt_core.train.run import load_readers

    for name in ("a.png", "b.png"):
        noise_image(40, 60).save(tmp_path / name)
    box = {"iscrowd": 0, "area": 100.0}
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.png", "height": 40, "width": 60},
            {"id": 3, "file_name": "gone.png", "height": 40, "width": 60},
        ],
        "categories": [{"id": 1, "name": "square"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], **box},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [5, 5, 20, 20], **box},  # unknown category
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, -4, 20], **box},  # negative width
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 20, 20], **box},
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [5, 5, 20, 20], **box},  # missing image
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    section = {"name": "coco", "annotations": str(tmp_path / "instances.json"), "image_dir": str(tmp_path)}
    recipe = load_recipe("tiny_qwen", {"data.train": [section]})
    with pytest.warns(UserWarning):
        _, skipped = load_readers(recipe.data.train, recipe.data.templates)
    assert dict(skipped) == {"empty_box": 1, "missing_image": 1, "unknown_category": 1}


def test_predict_takes_arrays_and_tensors_as_images(tiny_model):
    """HWC uint8, CHW float in [0, 1] and grayscale HW are the image a PIL image of the same pixels is."""
    rgb = np.array(noise_image(56, 84, seed=5))
    as_pil = tiny_model.predict(Image.fromarray(rgb), "Find it.", max_new_tokens=3)[0].text
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    texts = [p.text for p in tiny_model.predict([rgb, chw], "Find it.", max_new_tokens=3)]
    assert texts == [as_pil, as_pil]
    single = tiny_model.predict(chw, "Find it.", max_new_tokens=3)  # one tensor is one image, not a list of rows
    assert [p.text for p in single] == [as_pil]
    gray = tiny_model.predict(rgb[..., 0], "Find it.", max_new_tokens=3)
    assert len(gray) == 1
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        tiny_model.predict(rgb, "Find it.", batch_size=-1)
    with pytest.raises(ValueError, match=r"float values must be in \[0, 1\]"):
        tiny_model.predict(chw * 255, "Find it.")


@pytest.mark.parametrize("reachable", [False, True])
def test_the_hub_is_asked_once_and_offline_files_come_from_the_cache(monkeypatch, reachable):
    """Offline, ``from_pretrained`` would retry with back-off (~30 s a call, 2.5 min a backbone): one quick
    request decides, per process, and an unreachable hub means the hub's offline mode for the load
    (cache only, failing at once)."""
    import huggingface_hub.constants
    import huggingface_hub.utils
    from padt_plugins.backbones import _hf_utils

    from padt_core.backbone import HubUnreachableError

    asked: list[str] = []

    class Session:
        def head(self, url: str, timeout: float) -> None:
            asked.append(url)
            if not reachable:
                raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", Session)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hf_utils, "_hub_reachable", None)
    loads: list[dict] = []

    def loader(spec: str, **kwargs):
        loads.append({**kwargs, "offline": huggingface_hub.constants.HF_HUB_OFFLINE})
        raise OSError(f"{spec} is not in the cache")

    for _ in range(2):
        with pytest.raises(HubUnreachableError, match="org/model.*hf download org/model"):
            _hf_utils.load_from_hub(loader, "org/model", revision="main")
    assert asked == [huggingface_hub.constants.ENDPOINT]  # once per process
    expected = {"revision": "main", "offline": not reachable}  # offline mode during the load only
    assert loads == [expected, expected]
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert not _hf_utils.hub_reachable()  # the hub's offline mode: no request at all
    assert len(asked) == 1
