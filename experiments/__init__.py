"""Probes and one-off experiments: questions asked of the pipeline at other budgets or settings
(NetHack's budget probes, the EM probe, the Montezuma search depth), each writing its result
under ``experiments/results/``. Speed ratios live in ``benchmarks/``."""
