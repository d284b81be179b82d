"""Network architectures (config-driven modules, diffusers style)."""
