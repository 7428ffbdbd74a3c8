"""Foundations every other wing builds on: settings, logging, OpenCV limits, image decoding, source paths.

Nothing here imports another wing of ``serving``."""
