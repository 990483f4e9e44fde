"""``python -m qward.protected``: start the protected core."""

from qward.protected.server import main

raise SystemExit(main())
