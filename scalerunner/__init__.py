"""Scalerunner: an open source compute cluster for massive parallel CI."""

__version__ = "0.1.0"
