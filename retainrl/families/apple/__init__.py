"""AppleRetrieval, the study's toy: a 1-D walk to an apple and back, REINFORCE on a logistic policy."""
