"""``python -m jaxft.recipes.condense compress|generate ...``."""

from jaxft.recipes.condense.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
