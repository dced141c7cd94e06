"""The page in a real headless browser (Debian's chromium, driven by Playwright; no browser download):
upload an image, ask a REC question, see the drawn answer and the JSON; a non-image upload shows the error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install -e ".[serve]"')
playwright = pytest.importorskip("playwright.sync_api", reason='playwright is not installed: pip install -e ".[dev]"')

CHROMIUM = os.environ.get("PADT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        CHROMIUM is None, reason="no chromium: apt-get update && apt-get install -y chromium (or set PADT_CHROMIUM)"
    ),
]


@pytest.fixture(scope="module")
def page_url(tiny_model):
    from padt_core.serve import PaDTEngine, ServeLimits, create_app, shapes_examples, start_server

    app = create_app(PaDTEngine(tiny_model, max_new_tokens=12), ServeLimits(max_wait_ms=0), shapes_examples(2))
    with start_server(app) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def test_page_uploads_an_image_and_shows_the_answer(browser, page_url, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(page_url)
    page.wait_for_selector("#examples button img")  # the shapes examples load on first open
    assert "tiny_qwen" in page.text_content("#model")
    page.wait_for_function("document.getElementById('prompt').value !== ''")
    sentence = page.input_value("#prompt")  # the first example's sentence, filled in on open
    page.click("#examples button:nth-child(2)")
    page.wait_for_function(f"document.getElementById('prompt').value !== {json.dumps(sentence)}")
    page.set_input_files("#image-input", str(_example_file(page_url, tmp_path)))  # a real upload
    page.select_option("#task", "rec")
    page.fill("#prompt", sentence)
    page.click("#run")
    page.wait_for_selector("#annotated", state="visible")
    page.wait_for_function(
        "document.getElementById('annotated').complete && document.getElementById('annotated').naturalWidth > 0"
    )
    assert page.evaluate("document.getElementById('annotated').naturalWidth") == 224
    record = json.loads(page.text_content("#json"))
    assert record["image"] == "scene.png" and sentence in record["prompt"]
    assert record["vrt_grid"] == [8, 8] and isinstance(record["objects"], list)
    assert page.text_content("#answer") == record["text"]
    assert page.text_content("#error") == ""
    before = page.get_attribute("#annotated", "src")
    page.uncheck("#masks")  # the toggles redraw the kept result without asking the model again
    assert page.get_attribute("#annotated", "src") != before and "masks=false" in page.get_attribute(
        "#annotated", "src"
    )
    page.close()


def test_page_shows_a_bad_upload_as_an_error(browser, page_url, tmp_path):
    page = browser.new_page()
    page.goto(page_url)
    page.wait_for_selector("#examples button img")
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.set_input_files("#image-input", str(bad))
    page.fill("#prompt", "the red star")
    page.click("#run")
    page.wait_for_function("document.getElementById('error').textContent !== ''")
    assert (
        page.text_content("#error") == "Error 415: 'notes.txt' is not an image (PIL recognises no image format in it)"
    )
    page.fill("#prompt", "x" * 50_000)
    page.set_input_files("#image-input", str(_example_file(page_url, tmp_path)))
    page.click("#run")
    page.wait_for_function("document.getElementById('error').textContent.startsWith('Error 413')")
    assert "prompt has 50,000 characters" in page.text_content("#error")
    page.close()


def test_page_asks_about_two_images_at_once(browser, page_url, tmp_path):
    page = browser.new_page()
    page.goto(page_url)
    page.wait_for_selector("#examples button img")
    first = _example_file(page_url, tmp_path)
    second = tmp_path / "other.png"
    second.write_bytes(first.read_bytes())
    page.set_input_files("#image-input", [str(first), str(second)])
    assert page.text_content("#chosen-count") == "2 images, asked about together"
    page.select_option("#task", "prompt")
    page.fill("#prompt", "Which image shows the yellow diamond?")
    page.click("#run")
    page.wait_for_function(
        "document.querySelectorAll('#drawings img').length === 2 && "
        "[...document.querySelectorAll('#drawings img')].every((img) => img.complete && img.naturalWidth > 0)"
    )
    record = json.loads(page.text_content("#json"))
    assert [entry["image"] for entry in record["images"]] == ["scene.png", "other.png"]
    assert page.get_attribute("#drawings img:nth-child(2)", "src").endswith("&image=1")
    page.close()


def _example_file(url: str, tmp_path: Path) -> Path:
    import urllib.request

    path = tmp_path / "scene.png"
    with urllib.request.urlopen(f"{url}/api/examples/val_000000.png") as response:
        path.write_bytes(response.read())
    return path
