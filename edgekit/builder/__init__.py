"""A checkpoint to artifacts: the pipeline, staging, the manifest, the source scan, the lean vocabulary."""
