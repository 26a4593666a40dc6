"""The LDS / retraining benchmark behind ``evaluate.py`` (section 4, App. G.5-G.7 of the paper)."""
