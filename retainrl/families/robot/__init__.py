"""RoboticSequence: four Meta-World v3 tasks in a row, SAC with one head per stage."""
