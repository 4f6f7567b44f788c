"""Shared contracts at the bottom of the package: imported by everything, importing nothing above them."""
