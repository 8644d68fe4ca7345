"""export_images() and `recoverprune synthesize --export DIR --format png|npy`: synthetic
images for other toolchains' calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import recoverprune.data.synthetic_io as synthetic_io
from recoverprune import SyntheticImages
from recoverprune.data.synthetic_io import export_images

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _set(n: int = 10, channels: int = 3) -> SyntheticImages:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, 5, 6, generator=g)
    return SyntheticImages(x, torch.arange(n) % 3, mean=MEAN[:channels], std=STD[:channels])


def _pixels(x: torch.Tensor, mean, std) -> np.ndarray:
    """The de-normalisation the PNGs must hold, written out here independently."""
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return (torch.clamp(x * s + m, 0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("channels", [3, 1])
def test_png_round_trip_by_class(tmp_path, channels):
    ds = _set(channels=channels)
    out = export_images(ds, tmp_path / "cal", "png", classes=["cat", "dog", "eel"], chunk=4)
    assert sorted(p.name for p in out.iterdir()) == ["cat", "dog", "eel"]
    assert sorted(p.name for p in (out / "dog").iterdir()) == ["1.png", "4.png", "7.png"]
    for i in range(len(ds)):
        x, label = ds[i]
        image = np.asarray(Image.open(out / ["cat", "dog", "eel"][label] / f"{i}.png"))
        want = _pixels(x, ds.mean, ds.std)
        assert np.array_equal(image, want[..., 0] if channels == 1 else want), i


def test_png_folders_without_names_sort_in_label_order(tmp_path):
    ds = SyntheticImages(torch.zeros(12, 3, 2, 2), torch.arange(12))
    out = export_images(ds, tmp_path / "cal")
    assert sorted(p.name for p in out.iterdir()) == [f"{i:02d}" for i in range(12)]


def test_npy_holds_the_normalised_images_and_labels(tmp_path):
    ds = _set(n=7)
    out = export_images(ds, tmp_path / "cal", "npy", chunk=3)
    images = np.load(out / "images.npy")
    assert images.dtype == np.float32 and images.shape == (7, 3, 5, 6)
    assert np.array_equal(images, ds.images.numpy())
    assert np.array_equal(np.load(out / "labels.npy"), ds.labels.numpy())


def test_a_non_empty_directory_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "cal").mkdir()
    (tmp_path / "cal" / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="exists and is not empty"):
        export_images(_set(), tmp_path / "cal", "npy")
    assert (tmp_path / "cal" / "mine.txt").read_text() == "keep"
    export_images(_set(), tmp_path / "cal", "npy", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "cal").iterdir()) == ["images.npy", "labels.npy"]
    (tmp_path / "empty").mkdir()
    export_images(_set(), tmp_path / "empty", "npy")  # an empty directory is taken


def test_a_kill_part_way_leaves_no_directory(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic_io.to_pixels

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_io, "to_pixels", dying)
    with pytest.raises(KeyboardInterrupt):
        export_images(_set(), tmp_path / "cal", chunk=4)
    assert list(tmp_path.iterdir()) == []


def test_png_needs_one_or_three_channels(tmp_path):
    with pytest.raises(ValueError, match="use npy"):
        export_images(_set(channels=2), tmp_path / "cal")
    with pytest.raises(ValueError, match="format must be one of"):
        export_images(_set(), tmp_path / "cal", "jpg")
    assert list(tmp_path.iterdir()) == []


def test_the_synthesize_command_exports_after_synthesis(tmp_path, capsys):
    from recoverprune.cli import main
    from recoverprune.models import resnet20

    torch.save({"state_dict": resnet20().state_dict()}, tmp_path / "t.pt")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    args = ["synthesize", "--arch", "resnet20", "--checkpoint", str(tmp_path / "t.pt")]
    args += ["--n", "4", "--batch-size", "4", "--iterations", "1", "--quiet"]
    busy = main([*args, "--out", str(tmp_path / "syn0"), "--export", str(tmp_path / "busy")])
    assert busy == 2 and "exists and is not empty" in capsys.readouterr().err
    assert not (tmp_path / "syn0" / "manifest.json").exists()  # refused before synthesis
    out = ["--out", str(tmp_path / "syn"), "--export", str(tmp_path / "npy"), "--format", "npy"]
    assert main([*args, *out]) == 0
    ds = SyntheticImages.load(tmp_path / "syn")
    assert np.array_equal(np.load(tmp_path / "npy" / "images.npy"), ds.images.numpy())
    assert main([*args, "--out", str(tmp_path / "syn"), "--export", str(tmp_path / "png")]) == 0
    assert sum(1 for _ in (tmp_path / "png").rglob("*.png")) == 4
