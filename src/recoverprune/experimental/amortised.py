"""A fixed synthetic set made by the amortised generator: :func:`synthesize_with_generator`.

Experimental: on the budgets measured, the generator did not beat a fixed DeepInversion
set (:func:`recoverprune.synthesize`); it makes each batch with far fewer teacher passes.

Batches are made one after another by :class:`AmortisedSynthesizer` (each depends on the
state the previous ones left), so with ``out_dir`` every finished batch is written as a
shard and the synthesizer's state after it is written next to the shards: an interrupted
run resumes from that state and makes bitwise the images an uninterrupted one would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import Tensor, nn

from recoverprune.core.io import load_own, save_atomic
from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.runtime import Accel
from recoverprune.core.spec import InputSpec
from recoverprune.data.synthetic import SyntheticImages
from recoverprune.data.synthetic_io import open_set, write_shard
from recoverprune.experimental.generator import AmortisedSynthesizer, GeneratorConfig
from recoverprune.synthesis.plan import Batch, planned

__all__ = ["GENERATOR_STATE", "synthesize_with_generator"]

#: the synthesizer's state after the last finished shard (what a resumed run starts from)
GENERATOR_STATE = "generator-state.pt"


def synthesize_with_generator(
    teacher: nn.Module,
    n: int,
    *,
    config: GeneratorConfig | None = None,
    batch_size: int = 256,
    labels: Sequence[int] | Tensor | None = None,
    input: InputSpec | None = None,
    student: nn.Module | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    accel: Accel | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> SyntheticImages:
    """Synthesise ``n`` images from ``teacher`` with a meta-learned generator.

    The arguments mean what they mean for :func:`recoverprune.synthesize`; ``config``
    holds the generator's settings (default :class:`GeneratorConfig`), and ``student`` is
    used only with ``config.adversarial_weight > 0``. One process makes the set.

    Example:
        >>> from torch import nn
        >>> from recoverprune.core.spec import InputSpec
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
        >>> cfg = GeneratorConfig(width=16, warmup_batches=0, inner_steps=2)
        >>> ds = synthesize_with_generator(net, 4, config=cfg, batch_size=2,
        ...                                input=InputSpec(size=8), progress=False)
        >>> ds.images.shape
        torch.Size([4, 3, 8, 8])
    """
    cfg = config or GeneratorConfig()
    adversary = student if cfg.adversarial_weight > 0 else None
    how = dict(batch_size=batch_size, labels=labels, input=input, out_dir=out_dir, seed=seed)
    manifest_config = {"method": "generator", **asdict(cfg)}
    with planned(teacher, student, n, manifest_config, device=device, accel=accel, **how) as plan:
        if plan.rt.world_size > 1:
            raise ValueError(
                "a generator set is made by one process (each batch depends on the ones "
                "before): run it without torchrun, or stream it into recover(), where each "
                "rank streams its own batches"
            )
        num_classes = int(plan.manifest["num_classes"])
        synth = AmortisedSynthesizer(teacher, plan.spec, num_classes, cfg, plan.rt, seed)
        if plan.out is not None:
            open_set(plan.out, plan.manifest, True, overwrite)
            if (plan.out / GENERATOR_STATE).is_file():
                synth.load_state_dict(load_own(plan.out / GENERATOR_STATE))
        kept: dict[int, Batch] = {}
        todo = range(synth.batches, len(plan.sizes))
        with progress_bar("Generator", len(todo), progress and bool(todo)) as bar:
            for i in todo:
                t0 = time.perf_counter()
                images, lb, stats = synth.make_batch(plan.sizes[i], adversary, plan.labels_of(i))
                stats["seconds"] = time.perf_counter() - t0
                bar.advance(1, batch=f"{i + 1}/{len(plan.sizes)}", loss=stats["loss"])
                if plan.out is None:
                    kept[i] = (images, stats)
                    continue
                write_shard(plan.out, i, images, lb, stats)
                save_atomic(synth.state_dict(), plan.out / GENERATOR_STATE)
    return plan.result(kept)
