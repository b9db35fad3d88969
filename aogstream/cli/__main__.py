"""`python -m aogstream.cli` is the `aogstream` command too."""

import sys

from aogstream.cli import main

sys.exit(main())
