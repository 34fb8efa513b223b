"""DVC stage `finetune`: online fine-tuning of one retention method (all seeds) for one family."""

import sys

from retainrl.core.stage import main

if __name__ == "__main__":
    sys.exit(main("finetune", extra="method"))
