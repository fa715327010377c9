"""Floor 1, torch only: find attention modules, tap them, and compute exact weights."""
