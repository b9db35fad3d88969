"""`python -m aogstream` is the `aogstream` command."""

import sys

from aogstream.cli import main

sys.exit(main())
