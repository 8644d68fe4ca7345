"""The real shared teachers on the real CIFAR-10 JPEG test split (skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recoverprune import evaluate, prune
from recoverprune.core.io import fingerprint
from recoverprune.data import load_split
from recoverprune.models import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_split(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    archive = shared_dir / "datasets" / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    return load_split(archive, "test", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.parametrize(
    ("arch", "file", "expected"),
    [
        ("resnet20", "resnet20-12fca82f.th", 81.0),
        ("resnet32", "resnet32-d509ac18.th", 82.6),
    ],
)
def test_shared_teacher_accuracy_on_jpeg_test(arch, file, expected, shared_dir, test_split):
    model = load_model(arch, shared_dir / "teachers" / file)
    res = evaluate(model, test_split, progress=False)
    assert res.n == 10_000
    assert abs(res.top1 - expected) <= 0.4, res


def test_pruning_real_teacher_degrades_monotonically(shared_dir, test_split):
    teacher = load_model("resnet20", shared_dir / "teachers" / "resnet20-12fca82f.th")
    before = fingerprint(teacher)
    accs = [evaluate(prune(teacher, a), test_split, progress=False).top1 for a in (0.5, 0.9)]
    assert fingerprint(teacher) == before
    assert 81.5 > accs[0] > accs[1]
