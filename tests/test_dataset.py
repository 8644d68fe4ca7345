"""SyntheticImages: indexing, chunked access, split, save/load, denormalisation, PNG grids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recoverprune import SyntheticImages
from recoverprune.data.synthetic_io import MANIFEST, shard_name

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunks(sizes=(3, 4, 2), seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(s, 3, 5, 4, generator=g) for s in sizes]
    labels = [torch.randint(0, 5, (s,), generator=g) for s in sizes]
    return images, labels


def _chunked(sizes=(3, 4, 2), seed: int = 0, **kwargs) -> SyntheticImages:
    images, labels = _chunks(sizes, seed)
    return SyntheticImages(images, labels, **kwargs)


# --------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        ([torch.zeros(2, 3, 4, 4)], [torch.zeros(2), torch.zeros(2)], "same number of chunks"),
        (torch.zeros(2, 4, 4), torch.zeros(2), r"\(N, C, H, W\)"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1), r"\(N, C, H, W\)"),
        (torch.zeros(3, 3, 4, 4), torch.zeros(2), r"\(N, C, H, W\)"),
        ([], [], "at least one chunk"),
        (
            [torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 5, 5)],
            [torch.zeros(2), torch.zeros(2)],
            "one shape",
        ),
    ],
)
def test_construction_errors(images, labels, match: str):
    with pytest.raises(ValueError, match=match):
        SyntheticImages(images, labels)


def test_basic_properties_and_repr():
    ds = _chunked(mean=(0.5, 0.5, 0.5), std=(0.1, 0.2, 0.3), meta={"seed": 1})
    assert len(ds) == 9 and ds.image_shape == (3, 5, 4)
    assert ds.mean == (0.5, 0.5, 0.5) and ds.std == (0.1, 0.2, 0.3) and ds.meta == {"seed": 1}
    assert repr(ds) == "SyntheticImages(n=9, image_shape=(3, 5, 4))"
    assert isinstance(ds, torch.utils.data.Dataset)


# --------------------------------------------------------------------------- access
def test_getitem_positive_negative_and_out_of_range():
    images, labels = _chunks()
    ds = SyntheticImages(images, labels)
    flat_images, flat_labels = torch.cat(images), torch.cat(labels)
    for i in range(len(ds)):
        x, y = ds[i]
        assert torch.equal(x, flat_images[i]) and y == int(flat_labels[i]) and isinstance(y, int)
        assert x.dtype == torch.float32
        xn, yn = ds[i - len(ds)]
        assert torch.equal(xn, x) and yn == y
    for bad in (len(ds), len(ds) + 5, -len(ds) - 1):
        with pytest.raises(IndexError):
            ds[bad]


def test_images_and_labels_concatenate_the_chunks():
    images, labels = _chunks()
    ds = SyntheticImages(images, labels)
    assert torch.equal(ds.images, torch.cat(images)) and ds.images.dtype == torch.float32
    assert torch.equal(ds.labels, torch.cat(labels))
    half = SyntheticImages([im.half() for im in images], labels)
    assert half.images.dtype == torch.float32 and half[0][0].dtype == torch.float32


def test_get_batch_across_chunks_equals_indexing():
    ds = _chunked()
    idx = torch.tensor([8, 0, 3, 7, 2, 4, 4, 1])  # every chunk, unsorted, a repeat
    images, labels = ds.get_batch(idx)
    assert images.shape == (8, 3, 5, 4) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    for row, i in enumerate(idx.tolist()):
        x, y = ds[i]
        assert torch.equal(images[row], x) and int(labels[row]) == y
    # a list works too, and a single chunk takes the fast path to the same answer
    single = SyntheticImages(ds.images, ds.labels)
    for a, b in zip(single.get_batch(idx.tolist()), ds.get_batch(idx), strict=True):
        assert torch.equal(a, b)
    empty_images, empty_labels = ds.get_batch(torch.tensor([], dtype=torch.long))
    assert empty_images.shape == (0, 3, 5, 4) and empty_labels.shape == (0,)


# --------------------------------------------------------------------------- split
def test_split_sizes_disjoint_complete_and_deterministic():
    ds = _chunked(sizes=(7, 6, 7), meta={"seed": 9})
    rest, held = ds.split(0.25, seed=3)
    assert (len(rest), len(held)) == (15, 5)
    rows = {tuple(x.flatten().tolist()) for x in ds.images}
    rest_rows = {tuple(x.flatten().tolist()) for x in rest.images}
    held_rows = {tuple(x.flatten().tolist()) for x in held.images}
    assert not rest_rows & held_rows and rest_rows | held_rows == rows
    again_rest, again_held = ds.split(0.25, seed=3)
    assert torch.equal(again_held.images, held.images) and torch.equal(
        again_rest.labels, rest.labels
    )
    other = ds.split(0.25, seed=4)[1]
    assert not torch.equal(other.images, held.images)
    # labels travel with their images; normalisation and meta are kept
    for x, y in held:
        match = (ds.images == x).flatten(1).all(1).nonzero().flatten()
        assert int(ds.labels[match[0]]) == y
    assert held.mean == ds.mean and held.std == ds.std and held.meta == {"seed": 9}


def test_split_edges_and_bad_fraction():
    ds = _chunked()
    rest, held = ds.split(0.0)
    assert len(rest) == 9 and len(held) == 0 and held.image_shape == (3, 5, 4)
    rest, held = ds.split(1.0)
    assert len(rest) == 0 and len(held) == 9
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            ds.split(bad)


# --------------------------------------------------------------------------- persistence
def test_save_load_round_trip_is_bitwise(tmp_path: Path):
    ds = _chunked(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), meta={"seed": 7, "note": "x"})
    d = ds.save(tmp_path / "set")
    assert d == tmp_path / "set"
    assert sorted(p.name for p in d.iterdir()) == [MANIFEST, shard_name(0)]
    for mmap in (True, False):
        loaded = SyntheticImages.load(d, mmap=mmap)
        assert torch.equal(loaded.images, ds.images) and torch.equal(loaded.labels, ds.labels)
        assert loaded.mean == ds.mean and loaded.std == ds.std
        assert loaded.meta["seed"] == 7 and loaded.meta["note"] == "x" and loaded.meta["n"] == 9
        for i in (0, 4, -1):
            assert torch.equal(loaded[i][0], ds[i][0]) and loaded[i][1] == ds[i][1]
    # no temporary files are left behind
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_load_without_manifest_is_file_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        SyntheticImages.load(tmp_path)


def test_load_with_missing_shard_says_rerun_to_resume(tmp_path: Path):
    d = _chunked().save(tmp_path / "set")
    (d / shard_name(0)).unlink()
    with pytest.raises(FileNotFoundError, match=r"rerun.*resume"):
        SyntheticImages.load(d)


def test_load_of_a_corrupt_shard_is_a_clear_error(tmp_path: Path):
    d = _chunked().save(tmp_path / "set")
    (d / shard_name(0)).write_bytes(b"not a shard")
    with pytest.raises(ValueError, match="not a readable shard"):
        SyntheticImages.load(d)


# --------------------------------------------------------------------------- pixels
def test_denormalize_is_in_unit_range_and_inverts_normalisation():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = torch.rand(6, 3, 4, 4)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    ds = SyntheticImages((pixels - m) / s, torch.zeros(6, dtype=torch.long), mean=mean, std=std)
    assert torch.allclose(ds.denormalize(), pixels, atol=1e-6)
    wild = SyntheticImages(torch.randn(6, 3, 4, 4) * 10, torch.zeros(6, dtype=torch.long))
    out = wild.denormalize()
    assert out.min() >= 0 and out.max() <= 1 and (out == 0).any() and (out == 1).any()
    assert torch.equal(wild.denormalize(wild.images[:2]), out[:2])


@pytest.mark.parametrize(("per_class", "max_classes", "rows"), [(3, 10, 4), (5, 10, 4), (2, 2, 2)])
def test_save_grid_writes_a_png_with_one_row_per_class(
    tmp_path: Path, per_class: int, max_classes: int, rows: int
):
    from PIL import Image

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3])  # 4 classes, class 1 is short
    ds = SyntheticImages(torch.randn(12, 3, 5, 4), labels)
    path = ds.save_grid(tmp_path / "sub" / "grid.png", per_class=per_class, max_classes=max_classes)
    assert path == tmp_path / "sub" / "grid.png"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.mode == "RGB"
        # torchvision's make_grid: padding 1 around every 5x4 (H x W) tile
        assert img.size == (per_class * (4 + 1) + 1, rows * (5 + 1) + 1)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
