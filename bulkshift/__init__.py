"""Bulk Shift: sort a folder of images into categories in few clicks."""

__version__ = "0.1.0"
