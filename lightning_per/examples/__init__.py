"""Runnable examples on embedded data (MNIST-1D, scikit-learn digits, the standard library's source as text)."""

from lightning_per.examples.data import DigitsDataModule, MNIST1DDataModule
from lightning_per.examples.lm import CausalLM, CausalTransformer
from lightning_per.examples.models import MLP, Classifier, ContinualClassifier, ConvNet1D
from lightning_per.examples.split_tasks import SplitDigits, SplitMNIST1D
from lightning_per.examples.text import StdlibTextDataModule
from lightning_per.examples.transformed_tasks import PermutedDigits, PermutedMNIST1D, RotatedDigits

__all__ = [
    "MLP",
    "CausalLM",
    "CausalTransformer",
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
    "StdlibTextDataModule",
]
