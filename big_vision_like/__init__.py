"""big_vision_like: large-scale vision pretraining and transfer in JAX/Flax."""

__version__ = "0.1.0"
