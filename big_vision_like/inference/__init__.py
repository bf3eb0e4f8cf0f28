"""Entry points that run a trained checkpoint without training:
`evaluate` (the config's evaluators) and `predict` (top-k classes of images).
"""
