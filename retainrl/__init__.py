"""retainrl: forgetting of pre-trained capabilities in RL fine-tuning, as a reproducible pipeline.

The package is split by what knows what (imports only point down this list):

* ``core``: params loader, family registry, paths, atomic artifacts, stage dispatch;
* ``retention``: the knowledge-retention methods behind one interface (their registry is the
  only list of methods);
* ``learners``: REINFORCE, SAC, PPO+RND and sample-factory's APPO; they import no family;
* ``pipeline``: the evaluation, statistics and reports every family shares;
* ``families/<name>``: what is truly one environment's own (env, expert, nets, CLOSE/FAR).
"""

__version__ = "0.1.0"
