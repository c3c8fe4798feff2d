"""How environments are built, cases executed and results recorded."""

RUNNER_VERSION = "0.1.0"
