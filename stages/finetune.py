"""DVC stage `finetune`: online fine-tuning of one retention method (all seeds) for one family, through the
shared driver (retainrl.pipeline.finetune) that runs the family's loop (or the family's own stage where it defines one)."""

import sys

from retainrl.core.stage import main
from retainrl.pipeline.finetune import finetune

if __name__ == "__main__":
    sys.exit(main("finetune", generic=finetune, extra="method"))
