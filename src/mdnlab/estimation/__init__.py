"""Estimation: the penalized objective, R members trained as one batched network (restarts,
later bootstrap refits), Adam under Lightning with per-member early stopping, a batched
L-BFGS polish, and the choice of the penalty by the Laplace evidence."""
