"""DVC stage `fisher`: the stage every family shares (retainrl.pipeline.fisher), or the family's own where it defines one."""

import sys

from retainrl.core.stage import main
from retainrl.pipeline.fisher import fisher

if __name__ == "__main__":
    sys.exit(main("fisher", generic=fisher))
