"""The demo report renders in headless Chromium, with its tables and non-empty figures."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from medray.demo.figures import slice_montage
from medray.demo.report import figure_entry, write_report


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


@pytest.fixture()
def demo_out(tmp_path):
    slice_montage([np.linspace(0, 1, 64 * 64).reshape(64, 64)], ["gradient"], tmp_path / "slices.png",
                  panel_px=300)
    nodes = [{"role": "infer", "node_type": "infer-t4", "site": "main", "storage": "nvme",
              "accelerator": "T4", "resources": {"CPU": 2, "GPU": 1}, "gpu_health": "no GPU"}]
    (tmp_path / "nodes.json").write_text(json.dumps(nodes))
    return tmp_path


def test_report_lists_stages_nodes_and_figures(demo_out):
    results = {
        "01-placement": {"where": {"infer": "infer-t4"}, "seconds": 0.4},
        "10-preprocess": {"series": 24, "quarantined": {"truncated": 1}, "seconds": 12.5,
                          "figures": [{"path": "slices.png", "caption": "windowed slices"}]},
    }
    page = write_report(demo_out, results).read_text()
    assert "infer-t4" in page and "10-preprocess" in page and 'src="slices.png"' in page
    assert "windowed slices" in page and "truncated" in page


def test_missing_or_empty_figure_is_an_error(demo_out):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        write_report(demo_out, {"x": {"figures": [{"path": "nope.png"}]}})
    (demo_out / "empty.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="empty.png"):
        write_report(demo_out, {"x": {"figures": [{"path": "empty.png"}]}})


def test_figure_entry_is_relative_to_the_demo_folder(demo_out):
    assert figure_entry(demo_out, demo_out / "figures" / "a.png", "cap") == {"path": "figures/a.png", "caption": "cap"}


def screenshot(chromium, report, tmp_path):
    """A 1200x900 screenshot of ``report`` as grey levels."""
    shot = tmp_path / f"{report.parent.name}.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
         f"--screenshot={shot}", report.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    return np.asarray(Image.open(shot).convert("L"), dtype=np.float32)


def test_report_renders_in_headless_chromium_with_its_figures(demo_out, tmp_path):
    chromium = _chromium()
    with_figure = write_report(demo_out, {"10-preprocess": {
        "seconds": 1, "figures": [{"path": "slices.png", "caption": "windowed slices"}]}})
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = write_report(plain_dir, {"10-preprocess": {"seconds": 1}})
    pixels, plain_pixels = screenshot(chromium, with_figure, tmp_path), screenshot(chromium, plain, tmp_path)
    assert pixels.std() > 5, "the screenshot is blank"

    def grey(p):  # neither white page nor black text: the figure's grey gradient
        return int(((p > 40) & (p < 215)).sum())

    # The browser drew the figure's pixels (a broken or empty image would add a small icon at most).
    assert grey(pixels) - grey(plain_pixels) > 20_000
