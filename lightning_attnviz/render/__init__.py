"""Floor 3: pictures as uint8 arrays (one canvas, one text raster, one colour scale)."""
