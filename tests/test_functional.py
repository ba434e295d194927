"""The functional package: its ``__all__`` lists every public function of its modules."""

import importlib
import inspect

from lightning_per import functional as PF


def test_functional_all_lists_every_public_function_of_the_package():
    defined = set()
    for name in ("bounds", "priorities", "sampling", "variance"):
        module = importlib.import_module(f"lightning_per.functional.{name}")
        defined |= {
            n
            for n, obj in vars(module).items()
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not n.startswith("_")
        }
    assert defined == set(PF.__all__)
