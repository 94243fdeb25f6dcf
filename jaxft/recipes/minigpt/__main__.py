import sys

from jaxft.recipes.minigpt.cli import main

sys.exit(main(sys.argv[1:]))
