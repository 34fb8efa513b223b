"""Environment families, one sub-package each (found by :mod:`retainrl.core.family`)."""
