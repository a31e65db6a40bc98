"""The demo's report.html as a person sees it: rendered by headless Chromium, then the screenshot checked.

Skipped with a reason where no ``chromium`` is installed (``apt-get install -y chromium``; ``.ci/run``
installs it).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from report_records import write_fake_demo

from distill.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTH, HEIGHT = 1280, 2400


def screenshot(page, target, width: int = WIDTH, height: int = HEIGHT) -> None:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         f"--window-size={width},{height}", f"--screenshot={target}", page.as_uri()],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0 and target.is_file(), done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")
def test_the_report_renders_with_its_figures_in_chromium(tmp_path):
    from PIL import Image

    files = build_report(write_fake_demo(tmp_path / "demo"))
    shot = tmp_path / "report.png"
    screenshot(files.html, shot)
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (HEIGHT, WIDTH)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 500, f"only {len(colours)} colours: the page did not render its figures"
    # the region colours of the slice figure are on the page (WT yellow, TC vermilion, ET blue)
    for rgb in ((0xF0, 0xE4, 0x42), (0xD5, 0x5E, 0x00), (0x00, 0x72, 0xB2)):
        distance = np.abs(image.astype(int) - np.array(rgb)).sum(axis=-1)
        assert (distance < 90).sum() > 200, f"colour {rgb} barely appears in the screenshot"
    # ink across the page's height: the text and figures fill it, not just a header
    rows_with_ink = (image.min(axis=(1, 2)) < 128).mean()
    assert rows_with_ink > 0.3, f"only {rows_with_ink:.0%} of the rows hold anything dark"
