"""What turns every family's scored episodes into results the same way: forgetting, AUC, forward
transfer and spreads (``evaluation``), paired bootstrap intervals and verdicts (``stats``), and
the figures and Markdown of the reports (``report``)."""
