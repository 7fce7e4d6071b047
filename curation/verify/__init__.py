"""Verifiers for generated answers: math final answers (`math`), code run against tests (`code`):
a trusted checker and the candidate in separate confined processes (`sandbox.run_pair`), values
crossing between them in a strict encoding (`wire`). Import the submodule you need; `math` loads
sympy (through math-verify) on first use."""
