"""autonomous-runner: one cycle of LLM trading-signal generation per invocation, state in Redis."""

__version__ = "0.1.0"

__all__ = ["__version__"]
