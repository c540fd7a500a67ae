# cython: language_level=3
"""rtvoice's compiled audio core (being written)."""

CORE_VERSION = 0
