"""padt serve's API on loopback: batched answers equal one-at-a-time answers and `padt predict --out`,
bad input is one JSON error per request while the server keeps serving, a full server answers 503."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import noise_image
from PIL import Image

pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install -e ".[serve]"')

from padt_core.serve import (
    Batcher,
    Client,
    Job,
    PaDTEngine,
    QueueFull,
    RequestError,
    ServeError,
    ServeLimits,
    create_app,
    is_loopback,
    shapes_examples,
    start_server,
)
from padt_core.serve.inputs import task_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

TOKENS = 12  # answers long enough to hold VRTs, short enough for seconds per test


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def examples():
    return shapes_examples(2)


@pytest.fixture(scope="module")
def decoder_model():
    """The tiny Qwen2.5-VL with a decoder whose boxes depend on the last bits of the hidden states: random
    heads are flat enough to hide the differences a left-padded batch makes, trained ones are not."""
    import torch
    from helpers import sharpen

    import padt_core

    torch.manual_seed(0)
    model = padt_core.build(recipe="tiny_qwen_shapes").eval()
    sharpen(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return model


@pytest.fixture(scope="module")
def engine(decoder_model):
    return PaDTEngine(decoder_model, max_new_tokens=TOKENS)


@pytest.fixture(scope="module")
def server(engine, examples):
    # a long max wait: requests sent together in a test surely share a batch
    limits = ServeLimits(max_batch_size=4, max_wait_ms=250, max_queue=4, max_prompt_chars=2000)
    with start_server(create_app(engine, limits, examples)) as running:
        yield running


@pytest.fixture(scope="module")
def jobs(examples):
    """Six requests of different image sizes and prompt lengths (left padding differs across a batch)."""
    images = [examples[0].png, examples[1].png, _png(noise_image(90, 60, 2)), _png(noise_image(140, 252, 1))]
    return [
        dict(image=images[0], prompt=examples[0].sentence, task="rec", image_name="a.png"),
        dict(image=images[1], task="ovd", labels=list(examples[1].labels), image_name="b.png"),
        dict(image=images[2], prompt="hi", image_name="c.png"),
        dict(image=images[3], task="ric", image_name="d.png"),
        dict(image=images[1], prompt="Where is the blue diamond? Answer with its patches.", image_name="e.png"),
        dict(image=images[0], prompt=examples[1].sentence, task="rec", image_name="f.png"),
    ]


def test_batched_answers_equal_sequential_answers(server, jobs):
    client = Client(server.url)
    sequential = [client.predict(**job) for job in jobs]  # one at a time: each is a batch of one
    before = dict(client.info()["batch_sizes"])
    barrier = threading.Barrier(len(jobs))

    def send(job):
        barrier.wait()
        return client.predict(**job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(send, jobs))
    after = client.info()["batch_sizes"]
    grown = {size: n - before.get(size, 0) for size, n in after.items() if n != before.get(size, 0)}
    assert any(int(size) > 1 for size in grown), f"no request shared a batch: {grown}"
    assert together == sequential
    objects = [obj for record in sequential for obj in record["objects"]]
    assert any(obj["vrt"] for obj in objects), "the tiny model should point"
    assert all(obj["box"] and obj["mask"]["counts"] for obj in objects), "every object decoded"
    assert {record["image"] for record in together} == {"a.png", "b.png", "c.png", "d.png", "e.png", "f.png"}


def test_engine_batch_equals_model_predict_alone(engine, decoder_model, jobs):
    """Straight through the engine, eight images of different sizes with prompts of different lengths."""
    from padt_core.cli.predict import _prediction_json

    images = [noise_image(56 + 37 * k, 300 - 29 * k, k) for k in range(8)]
    prompts = [" ".join(["where is the object"] * (1 + k % 4)) for k in range(8)]
    alone = [decoder_model.predict([im], [p], max_new_tokens=TOKENS)[0] for im, p in zip(images, prompts)]
    batched = engine.predict(images, prompts)
    assert [_prediction_json(p, rle=True) for p in batched] == [_prediction_json(p, rle=True) for p in alone]
    assert all(obj.box is not None for p in alone for obj in p.objects)
    fast = PaDTEngine(decoder_model, max_new_tokens=TOKENS, batch_read=True).predict(images, prompts)
    assert [(p.text, [o.vrt for o in p.objects]) for p in fast] == [(p.text, [o.vrt for o in p.objects]) for p in alone]


def test_another_generation_engine_gets_each_batch_whole(decoder_model, jobs):
    """``padt serve --engine vllm``'s path, with an engine object standing in for vLLM (not installed here)."""
    calls = []

    class Recording:  # the engine contract of PaDTModel.predict(engine=...)
        def predict(self, images, prompts, batch_size=8, progress=None, **generation):
            calls.append((len(images), batch_size, generation))
            return decoder_model.predict(images, prompts, batch_size=batch_size, **generation)

    engine = PaDTEngine(decoder_model, max_new_tokens=TOKENS, generation_engine=Recording())
    images = [noise_image(60 + 20 * k, 80, k) for k in range(3)]
    answers = engine.answer([Job(image, f"{k}.png", "hi") for k, image in enumerate(images)])
    assert calls == [(3, 3, {"max_new_tokens": TOKENS})]
    assert [a.record["image"] for a in answers] == ["0.png", "1.png", "2.png"]


def test_answer_is_what_padt_predict_out_writes(server, jobs, decoder_model, tmp_path):
    from padt_core.cli import main

    model_dir, out = tmp_path / "model", tmp_path / "out"
    decoder_model.save_pretrained(model_dir)
    image = tmp_path / "a.png"
    image.write_bytes(jobs[0]["image"])
    argv = ["predict", str(model_dir), "--image", str(image), "--task", "rec", "--prompt", jobs[0]["prompt"]]
    assert main([*argv, "--out", str(out), "--max-new-tokens", str(TOKENS)]) == 0
    written = json.loads((out / "a.json").read_text())
    answer = Client(server.url).predict(**{**jobs[0], "image_name": str(image)})
    assert answer == written
    assert answer["vrt_grid"] == [8, 8] and answer["width"] == 224


def test_multipart_upload_as_the_page_sends_it(server, jobs):
    boundary = "padt-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\nrec\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n{jobs[0]["prompt"]}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="labels"\r\n\r\n\r\n'.encode(),  # unset field: ""
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + jobs[0]["image"]
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    request = urllib.request.Request(
        f"{server.url}/api/predict?keep=true",
        data=b"".join(parts),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        record = json.loads(response.read())
        key = response.headers["X-Padt-Result"]
    assert record == Client(server.url).predict(**jobs[0])
    for query in ("", "?masks=false&cells=false"):
        with urllib.request.urlopen(f"{server.url}/api/render/{key}{query}") as response:
            drawing = Image.open(io.BytesIO(response.read()))
            assert drawing.size == (record["width"], record["height"])
    for path, message in (("nope", "no kept result"), (f"{key}?image=1", "the result has 1 image(s)")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.url}/api/render/{path}")
        assert err.value.code == 404 and message in json.loads(err.value.read())["error"]


def test_several_images_in_one_request_as_predict_multi_answers(server, engine, decoder_model, examples, jobs):
    from padt_core.cli.predict import _vrt_grid, multi_prediction_record
    from padt_core.serve.inputs import decode_image

    pngs, prompt = [examples[0].png, examples[1].png], "Where is the blue diamond in the second image?"
    images = [decode_image(png, "x", ServeLimits()) for png in pngs]
    alone = decoder_model.predict([images], [prompt], max_new_tokens=TOKENS)[0]
    grids = [_vrt_grid(decoder_model, image) for image in images]
    expected = multi_prediction_record(["upload", "upload"], images, grids, prompt, alone)
    client = Client(server.url)
    assert client.predict(pngs, prompt) == expected
    assert [entry["vrt_grid"] for entry in expected["images"]] == [[8, 8], [8, 8]]
    # in a batch beside a one-image request, still the answer it gets alone
    single = Job(decode_image(jobs[2]["image"], "c.png", ServeLimits()), "c.png", "hi")
    both = engine.answer([Job(images, ["upload", "upload"], prompt), single])
    assert both[0].record == expected and both[1].record == engine.answer([single])[0].record
    drawing = Image.open(io.BytesIO(engine.draw(both[0], image=1)))
    assert drawing.size == images[1].size
    with pytest.raises(IndexError, match="has 2 image"):
        engine.draw(both[0], image=2)
    with pytest.raises(ServeError) as err:
        client.predict([pngs[0]] * 5, prompt)
    assert err.value.status == 413 and "5 images, more than the server's limit of 4" in err.value.message


def _post(url: str, body: bytes, kind: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/api/predict", data=body, headers={"Content-Type": kind}, method="POST")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_input_is_one_clear_error_and_the_server_keeps_serving(server, jobs, tmp_path):
    client = Client(server.url)
    good = jobs[0]["image"]
    jpeg = io.BytesIO()
    noise_image(64, 64, 3).save(jpeg, format="JPEG")
    huge = io.BytesIO()
    Image.new("1", (10000, 10000)).save(huge, format="PNG")  # 12 kB on disk, 300 MB decoded as RGB
    cases = [
        (dict(image=b"%PDF-1.4 not an image", prompt="hi"), 415, "is not an image"),
        (dict(image=jpeg.getvalue()[:300], prompt="hi"), 422, "cannot read image 'upload'"),
        (dict(image=huge.getvalue(), prompt="hi"), 413, "10000x10000 = 100,000,000 pixels"),
        (dict(image=good, prompt=""), 422, "prompt is empty"),
        (dict(image=good, prompt="   ", task="rec"), 422, "needs the referring sentence"),
        (dict(image=good, prompt="x" * 50_000), 413, "prompt has 50,000 characters"),
        (dict(image=good, task="ovd"), 422, "task 'ovd' needs labels"),
        (dict(image=good, task="segment", prompt="hi"), 422, "task 'segment' is not one of rec, ovd, ric, prompt"),
        (dict(image=good, prompt="look at <|VRT_999|>"), 422, "VRT_999"),  # the model's own check, per request
    ]
    for fields, status, message in cases:
        with pytest.raises(ServeError) as err:
            client.predict(**fields)
        assert err.value.status == status, (fields.get("prompt", "")[:20], err.value)
        assert message in err.value.message
    raw = [
        (b"{not json", 400, "not valid JSON"),
        (json.dumps({"image": "@@@", "prompt": "hi"}).encode(), 422, "not valid base64"),
        (json.dumps({"prompt": "hi"}).encode(), 422, "field image is missing"),
        (json.dumps({"image": "", "prompt": "hi", "colour": 1}).encode(), 422, "unknown field(s) colour"),
    ]
    for body, status, message in raw:
        code, answer = _post(server.url, body)
        assert (code, answer["status"]) == (status, status) and message in answer["error"], answer
    code, answer = _post(server.url, b"hello", "text/plain")
    assert code == 415 and "application/json" in answer["error"]
    # the server still answers, and answers the same
    assert client.predict(**jobs[2]) == client.predict(**jobs[2])
    assert client.info()["in_flight"] == 0


def test_a_full_server_answers_503_and_serves_the_rest(engine, jobs):
    release = threading.Event()

    class Held(PaDTEngine):  # the model waits until the test has filled the queue
        def predict(self, images, prompts):
            release.wait(30)
            return super().predict(images, prompts)

    limits = ServeLimits(max_batch_size=2, max_wait_ms=2000, max_queue=2)
    held = Held(engine.model, max_new_tokens=TOKENS)

    def wait_for(client, in_flight, waiting):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = client.info()
            if (info["in_flight"], info["waiting"]) == (in_flight, waiting):
                return
            time.sleep(0.02)
        raise AssertionError(f"the server holds {info['in_flight']} requests, {info['waiting']} waiting")

    with start_server(create_app(held, limits)) as running:
        client = Client(running.url)
        job = jobs[2]
        with ThreadPoolExecutor(7) as pool:
            accepted = [pool.submit(client.predict, **job) for _ in range(2)]
            wait_for(client, 2, 0)  # one batch of two, held in the model
            accepted += [pool.submit(client.predict, **job) for _ in range(2)]
            wait_for(client, 4, 2)  # and the queue full
            refused = [pool.submit(client.predict, **job) for _ in range(3)]
            errors = [f.exception(timeout=20) for f in refused]
            release.set()
            answers = [f.result(timeout=60) for f in accepted]
    assert all(isinstance(e, ServeError) and e.status == 503 for e in errors), errors
    assert "retry" in errors[0].message
    single = PaDTEngine(engine.model, max_new_tokens=TOKENS)
    from padt_core.serve.inputs import decode_image

    alone = single.answer([Job(decode_image(job["image"], "c.png", limits), "c.png", "hi")])[0].record
    assert all(answer == alone for answer in answers)


def test_batcher_groups_requests_and_isolates_a_failing_item():
    calls = []

    def run(items):
        calls.append(list(items))
        return [ValueError(f"bad {x}") if x < 0 else x * 10 for x in items]

    batcher = Batcher(run, max_batch_size=3, max_wait_s=0.5, max_queue=10)
    try:
        futures = [batcher.submit(x) for x in (1, -2, 3, 4)]
        assert futures[0].result(5) == 10 and futures[2].result(5) == 30 and futures[3].result(5) == 40
        with pytest.raises(ValueError, match="bad -2"):
            futures[1].result(5)
        assert [len(c) for c in calls] == [3, 1]  # max_batch_size, then the rest after max_wait
        assert batcher.batch_sizes == {3: 1, 1: 1}
    finally:
        batcher.close()


def test_batcher_queue_is_bounded_and_a_crashing_batch_fails_only_its_items():
    gate = threading.Event()

    def run(items):
        gate.wait(5)
        if 0 in items:
            raise RuntimeError("model crashed")
        return items

    batcher = Batcher(run, max_batch_size=1, max_wait_s=0, max_queue=2)
    try:
        first = batcher.submit(0)
        deadline = time.monotonic() + 5
        while batcher.waiting and time.monotonic() < deadline:  # the worker took it and waits on the gate
            time.sleep(0.01)
        queued = [batcher.submit(1), batcher.submit(2)]
        with pytest.raises(QueueFull, match="2 requests waiting"):
            batcher.submit(3)
        gate.set()
        with pytest.raises(RuntimeError, match="model crashed"):
            first.result(5)
        assert [f.result(5) for f in queued] == [1, 2]  # the worker outlived the crash
    finally:
        batcher.close()


def test_task_prompts_and_limits(decoder_model):
    from padt_core.data.templates import ovd_prompt, rec_prompt

    templates, limits = decoder_model.recipe.data.templates, ServeLimits(max_prompt_chars=200, max_labels=2)
    assert task_prompt("rec", " the red star ", None, templates, limits) == rec_prompt("the red star", templates)
    assert task_prompt("ovd", None, "star, , circle", templates, limits) == ovd_prompt(["star", "circle"], templates)
    assert task_prompt(None, "what is here?", None, templates, limits) == "what is here?"
    for args, status, message in [
        (("rec", "x", ["a"]), 422, "labels name the categories of task 'ovd'"),
        (("ric", "hi", None), 422, "task 'ric' writes its own prompt"),
        (("ovd", None, ["a", "b", "c"]), 413, "3 labels, more than the server's limit of 2"),
        (("rec", "y" * 190, None), 413, "the prompt for task 'rec' has"),  # the template makes it too long
    ]:
        with pytest.raises(RequestError) as err:
            task_prompt(*args, templates, limits)
        assert err.value.status == status and message in err.value.message
    with pytest.raises(ValueError, match="max_queue must be at least 1"):
        ServeLimits(max_queue=0)


def test_loopback_is_the_default_host():
    from padt_core.cli import build_parser

    args = build_parser().parse_args(["serve", "tiny_qwen"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_examples_are_shapes_scenes_with_queries(examples):
    assert len(examples) == 2
    for example in examples:
        image = Image.open(io.BytesIO(example.png))
        assert image.size == (224, 224)
        assert example.sentence.startswith("the ") and example.labels


def test_bench_serve_checks_every_answer(decoder_model):
    from padt_bench.serve import bench_serve

    result = bench_serve(decoder_model, clients=3, requests=2, distinct=4, max_batch_size=3, max_new_tokens=6)
    for side in ("one_at_a_time", "batched"):
        assert (result[side]["answered"], result[side]["lost"], result[side]["errors"]) == (6, 0, 0)
    assert result["one_at_a_time"]["batch_sizes"] == {"1": 6}
    assert result["compared"] == 6 and result["mismatches"] == 0 and result["reference_inconsistent"] == 0
    assert result["speedup"] > 0 and result["settings"]["clients"] == 3
