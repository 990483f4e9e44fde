"""``python -m qward``: the ``qward`` command."""

from qward.cli import main

main()
