"""`python -m cafe ...`: the `cafe` command."""

from cafe.cli import main

main()
