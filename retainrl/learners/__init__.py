"""Learners that fine-tune a policy with a list of retention methods and know no family:
``reinforce`` (on-policy, stacked seeds), ``sac`` (off-policy, stacked seeds), ``ppo_rnd`` (PPO
with random-network distillation, with ``rnd``) and ``appo`` (sample-factory's APPO learner with
the retention loss attached)."""
