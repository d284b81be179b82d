"""Model loading: official file formats, key remaps, safe checkpoint reading."""
