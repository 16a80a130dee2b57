"""`python -m mammolens COMMAND`: the same as the `mammolens` console command."""

from mammolens.cli import main

if __name__ == "__main__":
    main()
