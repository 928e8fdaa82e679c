"""CoEA: Co-Evolutionary Alignment for serendipitous recommendation."""

__version__ = "0.1.0"
