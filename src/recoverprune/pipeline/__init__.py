"""Layer 6: the jobs users run: the public ``prune``, presets, ``compress`` and its report."""
