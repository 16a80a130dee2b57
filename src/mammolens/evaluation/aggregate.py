"""Moved to :mod:`mammolens.pipeline.aggregate`; this name is kept for old imports."""

from mammolens.pipeline.aggregate import aggregate_breast, aggregate_exam  # noqa: F401

__all__ = ["aggregate_breast", "aggregate_exam"]
