"""The report in a real browser: headless Chromium (Debian's package) loads it with no console error,
and every image decodes and is drawn at a readable size.

Without /usr/bin/chromium the tests skip, except under CI (CI=true), where they fail: .ci/run
installs it (apt packages chromium and chromium-driver).
"""

from __future__ import annotations

import os

import pytest

from detkeeper.report import build_report
from detkeeper.report.page import CONTENT_SECURITY_POLICY
from headless_chromium import CHROMIUM, IMAGES, HeadlessChromium


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        reason = (f"{CHROMIUM} not found: install Debian's chromium package "
                  "(apt-get install -y chromium chromium-driver)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    with HeadlessChromium(CHROMIUM) as chromium:
        yield chromium


def test_the_report_loads_without_console_errors_and_every_image_renders(browser, exported_run, tmp_path):
    written = build_report(exported_run, tmp_path / "report.html")
    page = browser.open(written.path)
    images = page.evaluate(IMAGES)
    assert page.errors() == []
    assert len(images) == 3 + 1 + 2 * 4  # history, loss, learning rate; PR curves; 4 samples x (truth, prediction)
    for image in images:
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, image
    plots = images[:4]
    assert all(image["shownWidth"] >= 450 for image in plots), plots  # a 1400 px window: two plots a row
    assert page.evaluate("[...document.querySelectorAll('section h2')].map(h => h.textContent)") == [
        "Metric history", "Checkpoints", "Per-class AP of the best checkpoint (data.val)",
        "Sample predictions next to the ground truth (data.val)", "Exports"]
    assert page.evaluate("document.querySelectorAll('tr.best').length") == 1


def test_the_browser_check_sees_broken_images_console_errors_and_outside_resources(browser, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text(
        f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '</head><body><img alt="outside" src="https://example.com/plot.png">'
        '<img alt="corrupt" src="data:image/png;base64,iVBORw0KGgoAAAA="><script>console.error("boom")</script>'
        "</body></html>")
    page = browser.open(broken)
    images = page.evaluate(IMAGES)
    assert [image["naturalWidth"] for image in images] == [0, 0]
    errors = page.errors()
    assert any("example.com/plot.png" in error and "Content Security Policy" in error for error in errors), errors
    assert any("inline script" in error for error in errors), errors  # the page may not run scripts either
