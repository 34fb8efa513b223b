"""DVC stage `evaluate`: see retainrl.core.family (stage API) and the family module for what it makes."""

import sys

from retainrl.core.stage import main

if __name__ == "__main__":
    sys.exit(main("evaluate"))
