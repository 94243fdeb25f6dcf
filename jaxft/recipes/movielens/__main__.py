import sys

from jaxft.recipes.movielens.cli import main

sys.exit(main(sys.argv[1:]))
