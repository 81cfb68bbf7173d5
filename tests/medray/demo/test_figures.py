"""medray.demo.figures: each function writes a small, non-blank PNG of the stated size, its texts searchable."""

import sys

import numpy as np
import pytest
from PIL import Image

from medray.demo import figures
from medray.errors import ConfigError
from medray.privacy.pseudonym import pseudonym

MRN = "MRN-CANARY-0042"  # stands for PHI: it must never reach a figure


def read_png(path):
    """(grey pixels as float array, the PNG's text metadata, its raw bytes)."""
    image = Image.open(path)
    image.load()
    return np.asarray(image.convert("L"), dtype=np.float32), dict(image.text), path.read_bytes()


def assert_small_and_drawn(path, size):
    pixels, _, data = read_png(path)
    assert pixels.shape == (size[1], size[0])  # (height, width)
    assert pixels.std() > 5, "the figure is blank"
    assert 1_000 < len(data) < 100_000


def phantom(bright_z):
    """A (z, y, x) volume in [0, 1]: grey body, black background, one bright cube at slice bright_z."""
    volume = np.zeros((16, 64, 64), np.float32)
    volume[:, 16:48, 12:52] = 0.4
    volume[bright_z, 28:34, 20:26] = 1.0
    return volume


def test_slice_montage_size_and_panels(tmp_path):
    volumes = [phantom(8), phantom(2), phantom(8)[8], phantom(12)]  # 3-D volumes and a 2-D slice
    titles = ["a", "b\nsecond line", "c", "d"]
    path = figures.slice_montage(volumes, titles, tmp_path / "m.png", columns=3, panel_px=100)
    rows, lines = 2, 2
    assert_small_and_drawn(path, (3 * 100, rows * (100 + figures.TITLE_LINE_PX * lines)))
    _, text, _ = read_png(path)
    assert text["Description"].split("\n") == ["a", "b", "second line", "c", "d"]


def panel(path, index, *, panel_px, title_lines=1):
    pixels, _, _ = read_png(path)
    top = figures.TITLE_LINE_PX * title_lines
    return pixels[top:top + panel_px, index * panel_px:(index + 1) * panel_px]


def test_montage_views_mid_slice_or_maximum_projection(tmp_path):
    # The bright cube lies at z=2, away from the middle slice (z=8): only the projection shows it.
    volume = phantom(2)
    mid = figures.slice_montage([volume], ["mid"], tmp_path / "mid.png", panel_px=128)
    top = figures.slice_montage([volume], ["max"], tmp_path / "max.png", panel_px=128, view="max")
    assert panel(mid, 0, panel_px=128).max() < 150  # grey body only
    assert panel(top, 0, panel_px=128).max() > 240  # the cube, white
    assert panel(mid, 0, panel_px=128).min() < 10  # black background: windowed values in [0, 1]


def test_curves_bars_histogram_sizes(tmp_path):
    nan = float("nan")
    path = figures.curves([1, 2, 3], {"loss": {"train": [0.9, 0.7, 0.5], "held-out": [0.8, nan, 0.6]},
                                      "held-out AUC": {"held-out": [0.5, 0.7, 0.9]}},
                          tmp_path / "c.png", limits={"held-out AUC": (0, 1)}, size_px=(600, 240))
    assert_small_and_drawn(path, (600, 240))
    assert {"loss", "train", "held-out AUC"} <= set(read_png(path)[1]["Description"].split("\n"))

    path = figures.bars(["routine", "emergency"], {"read": [3.0, 2.5], "infer": [10.0, 4.0]}, tmp_path / "b.png",
                        xlabel="ms", size_px=(500, 200))
    assert_small_and_drawn(path, (500, 200))

    values = np.random.default_rng(0).normal(-600, 300, 10_000)
    path = figures.histogram(values, tmp_path / "h.png", xlabel="HU", log=True, size_px=(400, 300))
    assert_small_and_drawn(path, (400, 300))


def test_titles_are_in_the_file_so_phi_scans_see_them(tmp_path):
    # A pseudonymous title is written as text; so would PHI be, which is what lets PHI scans of the
    # demo's outputs (raw bytes) catch a caller that puts PHI in a title.
    ref = pseudonym(b"k" * 32, MRN, kind="patient")
    path = figures.slice_montage([phantom(8)], [f"{ref[:10]}…"], tmp_path / "ok.png")
    data = path.read_bytes().decode("latin-1")
    assert ref[:10] in data and MRN not in data
    leaky = figures.bars([MRN], {"count": [1]}, tmp_path / "leak.png", xlabel="n")
    assert MRN in leaky.read_bytes().decode("latin-1")


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="one title per volume"):
        figures.slice_montage([phantom(1)], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="volume"):
        figures.slice_montage([np.zeros(4)], ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="3 values for 2 x values"):
        figures.curves([1, 2], {"loss": {"train": [1, 2, 3]}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="1 values for 2 labels"):
        figures.bars(["a", "b"], {"n": [1]}, tmp_path / "x.png", xlabel="n")
    with pytest.raises(ValueError, match="no finite values"):
        figures.histogram(np.array([np.nan]), tmp_path / "x.png", xlabel="HU")
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(ConfigError, match="pip install"):
        figures.histogram(np.zeros(3), tmp_path / "x.png", xlabel="HU")
