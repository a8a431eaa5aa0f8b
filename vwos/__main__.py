"""``python -m vwos`` is the ``vwos`` command."""

from vwos._cli import console_main

console_main()
