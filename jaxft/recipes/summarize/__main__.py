import sys

from jaxft.recipes.summarize.cli import main

sys.exit(main(sys.argv[1:]))
