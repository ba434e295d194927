"""Scripts to copy: each trains its own LightningModule on its own data with lightning-per's public API.

Run them from the repository root, e.g. ``python examples/prioritized_sampling.py --fast``. This folder is a package
only so that a YAML file can name ``examples.own_model.MyClassifier``; the library never imports it.
"""
