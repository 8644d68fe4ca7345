"""Layer 1: pruning any ``nn.Module`` (masks, channels, blocks, the record of what was kept,
export), one handler per config type (:mod:`~recoverprune.pruning.dispatch`); no zoo, no data."""
