"""Hyper-parameters of the recovery (distillation) loop, and the loss terms they ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args, get_type_hints

from recoverprune.core.validate import check_fields
from recoverprune.distill.objectives import CrossEntropy, FeatureKD, LogitKD, LossTerm

__all__ = ["DistillConfig", "default_objective"]


BNMode = Literal["train", "frozen"]
MixMode = Literal["none", "mixup", "cutmix"]


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of the recovery (distillation) loop.

    Attributes:
        epochs: passes over the synthetic set.
        batch_size: images per step (per process when distributed).
        optimizer: ``"sgd"`` (momentum, Nesterov) or ``"adamw"``.
        lr: peak learning rate (reached after warm-up, then cosine decay to 0).
        momentum: SGD momentum.
        weight_decay: decoupled for AdamW, L2 for SGD.
        warmup_fraction: fraction of all steps spent warming the learning rate up.
        temperature: KD softmax temperature ``T``; the loss is ``T² · KL``.
        ce_weight: weight of cross-entropy to the synthetic target labels (0 = pure KD).
        feature_weight: weight of feature distillation (:class:`FeatureKD`, 0 = off).
        feature_layers: where features are matched: ``"auto"``, ``"blocks"`` or ``"bn"``.
        feature_depth_weighted: weight the *i*-th matched layer ``i`` times the first, so the
            last feature map before pooling counts most (MiR / DFBF).
        freeze_classifier: keep the student's classifier (its last ``nn.Linear``) as pruning
            left it, the teacher's own on the kept channels (MiR).
        local_fraction: fraction of the steps spent first on block-local recovery (each
            student block fitted to its teacher block on the teacher's inputs, weighted as
            ``feature_weight``), the rest end-to-end; 0 turns it off.
        recalibrate: first re-estimate the student's BatchNorm statistics on the images.
        reconstruct: first refit each masked layer's kept weights by least squares to the
            teacher layer's output on synthetic activations.
        gradual: fraction of the steps over which sparsity ramps (cubic) from 0 to the
            student's, masks re-selected by magnitude; 0 keeps the student's masks.
        mix: ``"mixup"``, ``"cutmix"`` (pairs of images mixed in each batch) or ``"none"``.
        augment: random crop (with ``crop_padding``) and, if ``flip``, horizontal flip.
        crop_padding: black padding (in pixel space) before the random crop.
        flip: random horizontal flips (turn off for digits and text).
        bn_mode: ``"train"`` updates the student's BatchNorm running statistics;
            ``"frozen"`` keeps them (the affine parameters still learn).
        holdout: fraction of the synthetic set held out to report teacher–student
            agreement when no ``val_data`` is given (0: train on every image).

    The defaults (reconstruction, feature distillation with weight 10, CutMix) are the
    best combination of ``benchmarks/recipe_ablation.py``.

    Example:
        >>> DistillConfig(epochs=10).temperature
        4.0
    """

    epochs: int = 60
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.03
    temperature: float = 4.0
    ce_weight: float = 0.0
    feature_weight: float = 10.0
    feature_layers: Literal["auto", "blocks", "bn"] = "auto"
    feature_depth_weighted: bool = False
    freeze_classifier: bool = False
    local_fraction: float = 0.0
    recalibrate: bool = False
    reconstruct: bool = True
    gradual: float = 0.0
    mix: MixMode = "cutmix"
    augment: bool = True
    crop_padding: int = 4
    flip: bool = True
    bn_mode: BNMode = "train"
    holdout: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, 1, "epochs", "batch_size", integer=True)
        check_fields(self, 0, "crop_padding", integer=True)
        check_fields(self, 0, "lr", "temperature", lo_open=True)
        check_fields(self, 0, "ce_weight", "feature_weight", "weight_decay")
        fractions = ("momentum", "gradual", "holdout", "warmup_fraction", "local_fraction")
        check_fields(self, 0, *fractions, hi=1, hi_open=True)
        hints = get_type_hints(DistillConfig)
        for name in ("optimizer", "feature_layers", "mix", "bn_mode"):  # one of its Literal
            *rest, last = get_args(hints[name])
            if getattr(self, name) not in (*rest, last):
                allowed = f"{', '.join(map(repr, rest))} or {last!r}"
                raise ValueError(f"{name} must be {allowed} (DistillConfig: {self!r})")


def default_objective(cfg: DistillConfig) -> list[LossTerm]:
    """The loss terms ``cfg`` asks for: logit KD, plus feature KD and CE when weighted.

    Example:
        >>> [t.name for t in default_objective(DistillConfig())]
        ['kd', 'feature']
        >>> [t.name for t in default_objective(DistillConfig(feature_weight=0, ce_weight=1))]
        ['kd', 'ce']
    """
    terms: list[LossTerm] = [LogitKD(temperature=cfg.temperature)]
    if cfg.feature_weight > 0:
        depth = cfg.feature_depth_weighted
        terms.append(
            FeatureKD(layers=cfg.feature_layers, weight=cfg.feature_weight, depth_weighted=depth)
        )
    if cfg.ce_weight > 0:
        terms.append(CrossEntropy(weight=cfg.ce_weight))
    return terms
