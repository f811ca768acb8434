"""Training: one loop for stages 1-3 and DPO, DDP, exact resume, logging."""
