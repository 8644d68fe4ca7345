"""A fixed synthetic set made by the amortised generator (``synthesize(method="generator")``).

Batches are made one after another by :class:`AmortisedSynthesizer` (each depends on the
state the previous ones left), so with ``out_dir`` every finished batch is written as a
shard and the synthesizer's state after it is written next to the shards: an interrupted
run resumes from that state and makes bitwise the images an uninterrupted one would.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from recoverprune.core.io import load_own, save_atomic
from recoverprune.core.progress import progress as progress_bar
from recoverprune.core.runtime import Runtime
from recoverprune.core.spec import InputSpec
from recoverprune.core.threads import revisit
from recoverprune.data.synthetic import SyntheticImages, shard_name
from recoverprune.synthesis.generator import AmortisedSynthesizer, GeneratorConfig
from recoverprune.synthesis.shards import check_or_write_manifest

__all__ = ["GENERATOR_STATE", "generate_set", "manifest_config"]

#: the synthesizer's state after the last finished shard (what a resumed run starts from)
GENERATOR_STATE = "generator-state.pt"


def manifest_config(cfg: GeneratorConfig) -> dict[str, Any]:
    """What a synthesis directory records as the settings of a generator set."""
    return {"method": "generator", **asdict(cfg)}


def generate_set(
    teacher: nn.Module,
    spec: InputSpec,
    labels: Tensor,
    batch_sizes: list[int],
    *,
    config: GeneratorConfig,
    manifest: dict[str, Any],
    rt: Runtime,
    seed: int,
    student: nn.Module | None,
    out: Path | None,
    overwrite: bool,
    show: bool,
) -> SyntheticImages:
    """The set of ``len(labels)`` images in batches of ``batch_sizes`` (teacher borrowed).

    Called by :func:`recoverprune.synthesize`, which has checked the arguments.
    """
    if rt.world_size > 1:
        raise ValueError(
            "a generator set is made by one process (each batch depends on the ones before): "
            "run it without torchrun, or stream it into recover(), where each rank streams "
            "its own batches"
        )
    synth = AmortisedSynthesizer(teacher, spec, int(manifest["num_classes"]), config, rt, seed)
    kept: list[tuple[Tensor, Tensor, dict[str, float]]] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        check_or_write_manifest(out, manifest, True, overwrite)
        if (out / GENERATOR_STATE).is_file():
            synth.load_state_dict(load_own(out / GENERATOR_STATE))
    starts = [sum(batch_sizes[:i]) for i in range(len(batch_sizes))]
    todo = range(synth.batches, len(batch_sizes))
    with progress_bar("Generator", len(todo), show and bool(todo)) as bar:
        for i in todo:
            revisit(verbose=show)
            t0 = time.perf_counter()
            lb = labels[starts[i] : starts[i] + batch_sizes[i]]
            images, lb, stats = synth.make_batch(len(lb), student, labels=lb)
            stats["seconds"] = time.perf_counter() - t0
            bar.advance(1, batch=f"{i + 1}/{len(batch_sizes)}", loss=stats["loss"])
            if out is None:
                kept.append((images, lb, stats))
                continue
            shard = {"images": images, "labels": lb.clone(), "batch": i, "stats": stats}
            save_atomic(shard, out / shard_name(i))
            save_atomic(synth.state_dict(), out / GENERATOR_STATE)
    if out is not None:
        return SyntheticImages.load(out)
    meta = {k: v for k, v in manifest.items() if k not in ("mean", "std")}
    meta["stats"] = [s for _, _, s in kept]
    mean, std = spec.normalisation()
    return SyntheticImages(
        [x for x, _, _ in kept], [y for _, y, _ in kept], mean=mean, std=std, meta=meta
    )
