"""`python -m mammolens COMMAND`: the same as the `mammolens` command."""

from mammolens.cli import main

main()
