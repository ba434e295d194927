"""Runnable examples on embedded data (MNIST-1D, scikit-learn digits); importable by the CLI after install."""

from lightning_per.examples.data import DigitsDataModule, MNIST1DDataModule
from lightning_per.examples.models import MLP, Classifier, ConvNet1D

__all__ = ["MLP", "Classifier", "ConvNet1D", "DigitsDataModule", "MNIST1DDataModule"]
