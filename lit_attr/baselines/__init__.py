"""Baselines of the comparison (paper section 4, App. G.3-G.4): TRAK, D-TRAK, pixel and CLIP cosine."""
