"""CLI command modules. Each module exposes `register(app)`; `flows.cli` discovers them."""
