"""`python -m bench`: the benchmark of tripmesh against the no-step-log limit and a DBOS workflow (issue 5)."""
