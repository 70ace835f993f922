"""lakehouse: landing files to bronze/silver/gold Delta tables, tuned MLlib models, predictions."""

__version__ = "0.1.0"
