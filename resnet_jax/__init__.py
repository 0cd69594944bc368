"""resnet_jax: deep residual networks in JAX/Flax, faithful to the papers."""

__version__ = "0.1.0"
