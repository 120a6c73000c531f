"""Tandem: split a neural network between edge devices and a cloud hub."""

__version__ = "0.1.0"
