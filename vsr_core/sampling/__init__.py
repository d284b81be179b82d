"""Schedules, the sampling loop, denoiser wrappers and temporal hooks."""
