"""Bulk Shift: sort a folder of images into categories with as few clicks as possible."""

__version__ = "0.1.0"
