"""Pipelines: a DAG of steps over a content-addressed artifact store, with caching, retries,
resume, fan-out and lineage (`stoker pipeline run|status|lineage`). A step's function takes a
`StepContext`."""

from stoker.pipeline.steps import StepContext

__all__ = ["StepContext"]
