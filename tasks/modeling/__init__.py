"""The two-tower model: its settings (presets), architecture, training loop, warm and cold
starts.
"""
