"""torch.distributed (gloo, 2 CPU processes): synthesis equals single-process; data-parallel recovery."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.multiprocessing.spawn import ProcessException

from _nets import calibrated, tiny_bn_net
from recoverprune import DistillConfig, SyntheticImages, prune, recover, synthesize

pytestmark = [  # spawned processes: slow
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable"),
]


def _teacher() -> nn.Module:
    net = calibrated(tiny_bn_net(), passes=1)
    net.pretrained_cfg = {"input_size": (3, 8, 8)}
    return net


SYNTH = {"n": 24, "batch_size": 4, "iterations": 3, "progress": False, "seed": 3}


def _init(rank: int, world: int, store: str, timeout_s: float = 60) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def _synth_worker(rank: int, world: int, store: str, out: str, fail_rank: int) -> None:
    _init(rank, world, store, timeout_s=10 if fail_rank >= 0 else 60)
    try:
        if rank == fail_rank:
            import recoverprune.data.synthetic_io as inv

            real = inv.save_atomic
            calls = {"n": 0}

            def dying(*a, **k):
                calls["n"] += 1
                if calls["n"] == 2:
                    os._exit(3)  # the process dies abruptly after one finished shard
                return real(*a, **k)

            inv.save_atomic = dying
        synthesize(_teacher(), out_dir=out, **SYNTH)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_distributed_synthesis_equals_single_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    single = synthesize(_teacher(), **SYNTH)
    mp.spawn(
        _synth_worker,
        args=(2, str(tmp_path / "store"), str(tmp_path / "out"), -1),
        nprocs=2,
        join=True,
    )
    multi = SyntheticImages.load(tmp_path / "out")
    assert torch.equal(single.images, multi.images)
    assert torch.equal(single.labels, multi.labels)


def test_dead_rank_then_rerun_on_one_process_completes(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "out"
    ctx = mp.spawn(
        _synth_worker, args=(2, str(tmp_path / "store"), str(out), 1), nprocs=2, join=False
    )
    with pytest.raises(ProcessException):
        while not ctx.join(timeout=60):
            pass
    finished = sorted(p.name for p in out.glob("shard-*.pt"))
    assert 0 < len(finished) < 6  # some shards done, the set incomplete
    with pytest.raises(FileNotFoundError, match="resume"):
        SyntheticImages.load(out)
    # resume on a different world size (1 process): same set as an uninterrupted run
    resumed = synthesize(_teacher(), out_dir=out, **SYNTH)
    assert torch.equal(resumed.images, synthesize(_teacher(), **SYNTH).images)


def _blocky_teacher() -> nn.Module:
    """Two conv-BN-ReLU blocks (what block-local recovery fits), pooling and a head."""
    torch.manual_seed(0)

    def block(a: int, b: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())

    net = nn.Sequential(block(3, 8), block(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))  # fmt: skip
    return calibrated(net, passes=1)


def _ddp_worker(rank: int, world: int, store: str, out: str, local: bool = False) -> None:
    _init(rank, world, store)
    try:
        teacher = _blocky_teacher() if local else _teacher()
        g = torch.Generator().manual_seed(0)
        data = SyntheticImages(
            torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,), generator=g)
        )
        student = prune(teacher, 0.5)
        masks = {n: b.clone() for n, b in student.named_buffers() if n.endswith("_mask")}
        cfg = DistillConfig(epochs=2, batch_size=4, lr=0.05, holdout=0.0)
        if local:  # block-local steps call the blocks outside DDP: gradients averaged by hand
            cfg = DistillConfig(epochs=2, batch_size=4, lr=0.05, local_fraction=0.75)
        recover(teacher, student, data, config=cfg, out_dir=out, progress=False)
        flat = torch.cat([p.detach().flatten() for p in student.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        result = {
            "rank": rank,
            "in_sync": all(torch.equal(gathered[0], t) for t in gathered),
            "masks_same": all(
                torch.equal(masks[n], b) for n, b in student.named_buffers() if n.endswith("_mask")
            ),
            "zeros_kept": all(
                bool(torch.all(m.weight[m.weight_mask == 0] == 0))
                for m in student.modules()
                if hasattr(m, "weight_mask")
            ),
        }
    finally:
        dist.destroy_process_group()
    # nothing may keep the process group alive: its leftover threads abort the process at exit
    result["gloo_threads_left"] = _gloo_threads()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def _gloo_threads() -> list[str]:
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():  # not Linux: nothing to inspect
        return []
    names = []
    for t in tasks.iterdir():
        try:
            names.append((t / "comm").read_text().strip())
        except OSError:
            continue
    return [n for n in names if "gloo" in n]


@pytest.mark.parametrize("local", [False, True], ids=["end-to-end", "block-local-first"])
def test_ddp_recovery_keeps_masks_and_ranks_in_sync(tmp_path: Path, local: bool) -> None:
    out = tmp_path / "rec"
    out.mkdir()
    args = (2, str(tmp_path / "store"), str(out), local)
    mp.spawn(_ddp_worker, args=args, nprocs=2, join=True)
    for rank in range(2):
        res = torch.load(out / f"rank{rank}.pt", weights_only=True)
        assert res["in_sync"] and res["masks_same"] and res["zeros_kept"], res
        assert res["gloo_threads_left"] == [], res
    assert (out / "student.pt").is_file()  # written by rank 0


def _stream_worker(rank: int, world: int, store: str, out: str) -> None:
    from recoverprune.experimental.generator import GeneratorConfig
    from recoverprune.experimental.stream import StreamConfig, SyntheticStream

    _init(rank, world, store)
    try:
        teacher = _teacher()
        gen = GeneratorConfig(width=16, latent_dim=8, warmup_batches=1, warmup_steps=2)
        cfg = StreamConfig(
            batch_size=4, initial_batches=2, batches_per_epoch=1, steps_per_epoch=2, generator=gen
        )
        dcfg = DistillConfig(epochs=2, batch_size=4, lr=0.05, holdout=0.0)
        flats = []
        for _ in range(2):  # the same seed and world size twice: the same student
            stream = SyntheticStream(teacher, cfg, seed=5)
            student = recover(teacher, prune(teacher, 0.5), stream, config=dcfg, progress=False)
            flats.append(torch.cat([p.detach().flatten() for p in student.parameters()]))
        flat = flats[0]
        pool = stream.images.flatten().double()
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        pools = [torch.zeros_like(pool) for _ in range(world)]
        dist.all_gather(gathered, flat)
        dist.all_gather(pools, pool)
        result = {
            "in_sync": all(torch.equal(gathered[0], t) for t in gathered),
            "own_pools": not torch.equal(pools[0], pools[1]),
            "made": stream.made,
            "repeatable": torch.equal(flats[0], flats[1]),
        }
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(out) / f"rank{rank}.pt")


def test_each_rank_streams_its_own_batches_deterministically(tmp_path: Path) -> None:
    mp.spawn(_stream_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(r["in_sync"] and r["own_pools"] and r["repeatable"] for r in ranks), ranks
    assert ranks[0]["made"] == ranks[1]["made"] == 4 * (2 + 1)
