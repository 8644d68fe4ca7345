"""Layer 1: pruning any ``nn.Module``: magnitude masks, channels through a dependency graph,
the record of kept channels, export. No zoo, no data: callers pass calibration images.
"""
