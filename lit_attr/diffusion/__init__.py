"""DDPM pieces: noise schedule, loss, draws of (timestep, noise), U-Net presets, sampling."""
