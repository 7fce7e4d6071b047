"""Verifiers for generated answers: math final answers (`math`), code run against tests (`code`) in a
confined subprocess (`sandbox`). Import the submodule you need; `math` loads sympy."""
