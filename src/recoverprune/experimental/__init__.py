"""Experimental features: measured, kept working, and *not* part of the stable API.

Each module here was measured against the default path and lost (the numbers are in its
docstring and in the docs); it stays because some runs may still need it. Nothing below
this package imports it (``tests/test_architecture.py`` checks); only the command line and
users who ask for it by name do. Names and behaviour may change between releases.
"""
