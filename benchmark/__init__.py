"""Experiment-tracked transfer-learning benchmarks on CIFAR-100.

Data flows one way: spec -> data -> model -> train -> measure -> track -> report.
"""

__version__ = "0.1.0"
