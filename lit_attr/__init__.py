"""lit-attr: train DDPMs with Lightning and attribute samples to training data with K-FAC influence.

The method follows Mlodozeniec et al., "Influence Functions for Scalable Data Attribution in
Diffusion Models" (``../shared/paper/influence-diffusion.txt``).
"""

__version__ = "0.1.0"
