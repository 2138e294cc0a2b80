"""Kiln: bake hardened golden machine images with Packer, verify them, deploy them immutably."""

__version__ = "0.1.0"
