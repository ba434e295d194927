"""Online batch selection: each step scores a presample without gradients and trains on the points a rule picks."""
