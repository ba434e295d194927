"""Online batch selection: each step scores a presample without gradients and trains on the points a rule picks.

One engine (``engine.OnlineSelection``) runs every method; a method is a rule object (``rules``: which points, with
which weights) and a switch (which steps select: after ``warmup_steps``, or while ``tau`` says importance sampling
pays). The named callbacks (``TopKSelection``, ``SelectiveBackprop``, ``ImportanceSamplingCallback``) are thin
classes over the engine, for YAML; ``IrreducibleLoss`` provides the ``reducible`` score's table.
"""
