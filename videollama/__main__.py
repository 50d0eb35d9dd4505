"""``python -m videollama`` is the ``videollama`` command."""

import sys

from .cli import main

sys.exit(main())
