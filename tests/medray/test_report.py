"""The demo report renders in headless Chromium, with its tables and non-empty figures."""

import json
import os
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from medray.report import write_report  # noqa: E402


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


@pytest.fixture()
def demo_out(tmp_path):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.linspace(0, 1, 64 * 64).reshape(64, 64), cmap="gray")
    fig.savefig(tmp_path / "slices.png")
    plt.close(fig)
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


def test_missing_figure_is_an_error(demo_out):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        write_report(demo_out, {"x": {"figures": [{"path": "nope.png"}]}})


def test_report_renders_in_headless_chromium(demo_out, tmp_path):
    chromium = _chromium()
    report = write_report(demo_out, {"10-preprocess": {
        "seconds": 1, "figures": [{"path": "slices.png", "caption": "windowed slices"}]}})
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900",
         f"--screenshot={shot}", report.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 5, "the screenshot is blank"
    assert (demo_out / "slices.png").stat().st_size > 1000
