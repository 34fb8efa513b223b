"""retainrl: forgetting of pre-trained capabilities in RL fine-tuning, as a reproducible pipeline.

The library is split by the study's own nouns: ``envs`` (environment families with their
CLOSE/FAR split and expert), ``algos`` (learners), ``retention`` (knowledge-retention methods
behind one interface), ``config`` (the typed params.yaml schema) and ``artifacts`` (atomic
reads and writes of everything a stage produces).
"""

__version__ = "0.1.0"
