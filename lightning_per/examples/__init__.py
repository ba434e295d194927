"""Runnable examples on embedded data (MNIST-1D, scikit-learn digits); importable by the CLI after install."""

from lightning_per.examples.data import DigitsDataModule, MNIST1DDataModule
from lightning_per.examples.models import MLP, Classifier, ContinualClassifier, ConvNet1D
from lightning_per.examples.split_tasks import SplitDigits, SplitMNIST1D
from lightning_per.examples.transformed_tasks import PermutedDigits, PermutedMNIST1D, RotatedDigits

__all__ = [
    "MLP",
    "Classifier",
    "ContinualClassifier",
    "ConvNet1D",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "PermutedDigits",
    "PermutedMNIST1D",
    "RotatedDigits",
    "SplitDigits",
    "SplitMNIST1D",
]
