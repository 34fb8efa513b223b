"""DVC stage `far_buffer`: the stage every family shares (retainrl.pipeline.far_buffer), or the family's own where it defines one."""

import sys

from retainrl.core.stage import main
from retainrl.pipeline.far_buffer import far_buffer

if __name__ == "__main__":
    sys.exit(main("far_buffer", generic=far_buffer))
