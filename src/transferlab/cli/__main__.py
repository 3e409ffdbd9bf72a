"""`python -m transferlab.cli`: the same as the `transferlab` command."""

from transferlab.cli import main

main()
