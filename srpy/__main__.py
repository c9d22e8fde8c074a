"""C{python -m srpy ...}: the same as C{srpyapp ...} (the launcher)."""

import sys

from srpy.cli import main

sys.exit(main())
