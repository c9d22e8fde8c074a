#!/usr/bin/env python3
"""Host srpy engines on this machine: C{python srpyapp.py -h} lists the options."""

import sys

from srpy.cli import main

if __name__ == "__main__":
    sys.exit(main())
