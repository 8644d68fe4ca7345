"""Layer 0: what every stage stands on: atomic I/O and temp-file hygiene, runtime (devices,
threads, seeds), progress, input descriptions, stage keys for resume, the error map.
"""
