"""Distill: turn a slow nnU-Net v2 BraTS ensemble into a tiny, fast 3D student and serve it."""

__version__ = "0.1.0"
