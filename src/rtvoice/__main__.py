"""``python -m rtvoice``: see :mod:`rtvoice.cli`."""

from rtvoice.cli import main

raise SystemExit(main())
