"""DVC stage `collect_demos`: see retainrl.envs (stage API) and the family module for what it makes."""

import sys

from retainrl.stage import main

if __name__ == "__main__":
    sys.exit(main("collect_demos"))
