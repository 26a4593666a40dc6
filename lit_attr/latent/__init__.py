"""Latent diffusion: a frozen diffusers ``AutoencoderKL``, its cached training latents, and a small VAE
LightningModule to train one on bundled data."""
