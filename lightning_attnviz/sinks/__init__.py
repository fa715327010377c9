"""Floor 4: where pictures go: the TensorBoard event file, the other loggers, tag names, the capture file."""
