"""DVC stage `eval_starts`: a family's own held-out evaluation starts (NetHack: FAR start states
from expert games never used for demos or BC, and the expert scored on the evaluation protocol)."""

import sys

from retainrl.core.stage import main

if __name__ == "__main__":
    sys.exit(main("eval_starts"))
