"""Layer 1: pruning any ``nn.Module``: magnitude masks, channels through a dependency graph,
whole residual blocks, the record of what was kept, export. The handler table
(:mod:`~recoverprune.pruning.dispatch`) maps each config type to the code that prunes for
it. No zoo, no data: callers pass calibration images.
"""
