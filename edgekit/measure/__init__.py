"""bench: orchestration, the bench child, memory and page accounting, limits, the budget gate, roofline, sweeps."""
