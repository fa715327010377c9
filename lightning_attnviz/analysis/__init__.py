"""Floor 2, numpy: views of the maps, statistics, vision maths and history across captures."""
