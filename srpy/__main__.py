"""C{python -m srpy ...}: the same as C{srpyapp ...} (the launcher)."""

import sys

from srpy.launcher import main

sys.exit(main())
