"""Analyzers: one async method that turns a request into a validated analysis."""

from runner.analyzers.base import AnalysisRequest, Analyzer

__all__ = ["AnalysisRequest", "Analyzer"]
