"""The Attention tab: its TensorBoard plugin, record codec and frontend; imports nothing of ours."""
