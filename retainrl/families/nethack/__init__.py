"""NetHack (NLE, Human Monk): a scripted expert, behavioural cloning, APPO in sample-factory."""
