"""srpy's version and copyright: nothing else, so that any module (and setup.py) may read them."""

__version__ = "0.3.0"
copyright = "Copyright (c) 2009, 2026 the srpy developers. BSD-3-Clause."
