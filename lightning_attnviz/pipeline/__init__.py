"""Floor 5: one capture end to end, the drawing process and its training-side client."""
