from mammolens.cli import main

main()
