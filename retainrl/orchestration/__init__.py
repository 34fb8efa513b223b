"""What drives the pipeline from outside the stages (Prefect flows, retrieval at a revision): the
DVC DAG read as data (``dag``) and artifacts fetched from any git revision (``retrieve``). No
stage imports it, so editing it never invalidates a cached result."""
