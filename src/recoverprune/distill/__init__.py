"""Layer 5: recovering a pruned student from its teacher: augmentation, loss terms,
repairs before training (BN recalibration, least-squares refit), the loop.
"""
