"""``python -m jaxft.condense compress|generate ...``: run an exported condenser from the shell.

The implementation lives in ``jaxft.recipes.condense.cli``; this module only gives it a short name.
"""

from jaxft.recipes.condense.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
