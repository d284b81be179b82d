"""Constants shared by the node modules."""

CATEGORY = "Diffusion VSR"
