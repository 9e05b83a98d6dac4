"""Arrowsmith: a high-throughput V2 (Open Inference Protocol) server for MLflow models.

Importing the package is cheap: MLflow, pandas and pyarrow load only when a model does.
"""

__version__ = "0.1.0"
