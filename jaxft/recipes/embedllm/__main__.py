import sys

from jaxft.recipes.embedllm.cli import main

sys.exit(main(sys.argv[1:]))
