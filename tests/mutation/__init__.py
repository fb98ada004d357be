"""The mutation score of the pure core: ``make mutation`` (``python -m tests.mutation``)."""
