"""``python -m churnwatch.cli``: the same as the ``churnwatch`` command."""

from churnwatch.cli import main

main()
