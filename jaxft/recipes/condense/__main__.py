"""``python -m jaxft.recipes.condense compress|generate|evaluate ...``."""

from jaxft.recipes.condense.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
