"""recoverprune.data and evaluate(): ImageFolder / tar.gz reading, caching, errors, accuracy."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from recoverprune import EvalResult, evaluate
from recoverprune.data import DataError, ImageTensorDataset, extract, load_split


def _tree(root: Path, n: int = 3, size: int = 8) -> Path:
    for label, c in enumerate(("a", "b", "c")):
        (root / "test" / c).mkdir(parents=True)
        for i in range(n):
            # pixel value encodes the label so a model can read it back
            Image.new("RGB", (size, size), (label * 100, 0, 0)).save(root / "test" / c / f"{i}.png")
    return root


def _tar(src: Path, dst: Path) -> Path:
    with tarfile.open(dst, "w:gz") as t:
        t.add(src / "test", arcname="test")
    return dst


def test_folder_labels_and_normalisation(tmp_path):
    ds = load_split(
        _tree(tmp_path / "d"),
        "test",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        cache_dir=tmp_path / "cache",
    )
    assert len(ds) == 9 and ds.classes == ["a", "b", "c"]
    assert ds.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    x, y = ds[4]
    assert y == 1
    assert x[0, 0, 0].item() == pytest.approx((100 / 255 - 0.5) / 0.5, abs=1e-6)
    assert x[1, 0, 0].item() == pytest.approx(-1.0)
    xb, yb = ds.batch(torch.tensor([0, 8]))
    assert xb.shape == (2, 3, 8, 8) and yb.tolist() == [0, 2]


def test_archive_extracted_once_and_cache_reused(tmp_path, monkeypatch):
    archive = _tar(_tree(tmp_path / "d"), tmp_path / "toy.tar.gz")
    root = extract(archive, tmp_path / "cache")
    assert (root / "test" / "b" / "0.png").is_file()
    calls = {"n": 0}
    real_open = tarfile.open

    def counting(*a, **k):
        calls["n"] += 1
        return real_open(*a, **k)

    monkeypatch.setattr(tarfile, "open", counting)
    assert extract(archive, tmp_path / "cache") == root
    ds = load_split(archive, "test", cache_dir=tmp_path / "cache")
    assert calls["n"] == 0 and len(ds) == 9
    # the decoded tensor is cached too: a second load decodes nothing
    monkeypatch.setattr(Image, "open", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert len(load_split(archive, "test", cache_dir=tmp_path / "cache")) == 9


def test_corrupt_archive_leaves_no_cache(tmp_path):
    good = _tar(_tree(tmp_path / "d", n=20, size=16), tmp_path / "good.tar.gz")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        extract(bad, tmp_path / "cache")
    assert not any(p for p in (tmp_path / "cache").iterdir() if p.name != "decoded")


@pytest.mark.parametrize("case", ["missing", "empty", "no_split", "no_images"])
def test_bad_paths(tmp_path, case):
    path = tmp_path / "x"
    if case != "missing":
        path.mkdir()
    if case == "no_split":
        (path / "train" / "a").mkdir(parents=True)
    if case == "no_images":
        (path / "test" / "a").mkdir(parents=True)
        (path / "test" / "a" / "notes.txt").write_text("hi")
    message = {
        "missing": "not found",
        "empty": "empty",
        "no_split": "no 'test' folder",
        "no_images": "no images",
    }[case]
    with pytest.raises(DataError, match=message):
        load_split(path, "test", cache_dir=tmp_path / "cache")


def test_mixed_sizes_need_image_size(tmp_path):
    root = _tree(tmp_path / "d")
    Image.new("RGB", (5, 5)).save(root / "test" / "a" / "odd.png")
    with pytest.raises(DataError, match="image_size"):
        load_split(root, "test", cache_dir=tmp_path / "c1")
    assert load_split(root, "test", cache_dir=tmp_path / "c2", image_size=8).images.shape[-1] == 8


class _ReadLabel(nn.Module):
    """Predicts the class encoded in the red channel (0, 100, 200 -> 0, 1, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Linear(1, 1)
        self.dropout = nn.Dropout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (x[:, 0].mean(dim=(1, 2)) * 255 / 100).round().long()  # mean=0, std=1 below
        return nn.functional.one_hot(level, 3).float() * 10


def test_evaluate_exact_accuracy_and_mode_restored(tmp_path):
    ds = load_split(
        _tree(tmp_path / "d"), "test", mean=(0, 0, 0), std=(1, 1, 1), cache_dir=tmp_path / "cache"
    )
    model = _ReadLabel().train()
    res = evaluate(model, ds, progress=False, batch_size=4)
    assert isinstance(res, EvalResult) and res.top1 == 100.0 and res.n == 9
    assert model.training and model.dropout.training

    class Constant(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 5.0, 0.0]]).expand(len(x), 3)

    assert evaluate(Constant(), ds, progress=False).top1 == pytest.approx(100 / 3)
    # a DataLoader / plain dataset works too
    loader = torch.utils.data.DataLoader(
        list(zip(ds.batch(torch.arange(9))[0], ds.labels, strict=True)), batch_size=2
    )
    assert evaluate(model, loader, progress=False).top1 == 100.0


def test_evaluate_restores_mode_on_exception():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(2)

        def forward(self, x):
            raise RuntimeError("boom")

    model = Boom().train()
    data = ImageTensorDataset(torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.zeros(2), ["a"])
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(model, data, progress=False)
    assert model.training and model.bn.training


@pytest.mark.slow
def test_real_cifar10_test_split(shared_dir, tmp_path):
    archive = shared_dir / "datasets" / "cifar10-jpeg.tar.gz"
    ds = load_split(archive, "test", cache_dir=tmp_path)
    assert len(ds) == 10_000 and ds.images.shape[1:] == (3, 32, 32)
    assert ds.classes == [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


def _extract_and_read(archive: str, cache: str, start: float) -> int:
    """One of several processes extracting the same archive into one cache at once."""
    import time

    time.sleep(max(0.0, start - time.time()))  # all start together
    root = extract(archive, cache_dir=cache)
    until = time.time() + 2.0  # keep reading while the others finish their extraction
    while True:
        found = sum(len(p.read_bytes()) > 0 for p in sorted(root.rglob("*.png")))
        if time.time() > until:
            return found


@pytest.mark.slow
def test_concurrent_extraction_never_removes_a_finished_cache(tmp_path):
    # torchrun ranks and side-by-side benchmarks share one cache: a process that finishes
    # second must not delete the tree the first one is already reading.
    import multiprocessing as mp
    import time

    archive = _tar(_tree(tmp_path / "src", n=300, size=4), tmp_path / "many.tar")
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        start = time.time() + 3.0
        args = [(str(archive), str(tmp_path / "cache"), start)] * 4
        counts = pool.starmap(_extract_and_read, args)
    assert counts == [900] * 4
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert left == [extract(archive, tmp_path / "cache").name]  # no temporaries left
