"""DVC stage `sweep`: a family's parameter sweep (AppleRetrieval: forgetting against M or c)."""

import sys

from retainrl.core.stage import main

if __name__ == "__main__":
    sys.exit(main("sweep", extra="axis"))
