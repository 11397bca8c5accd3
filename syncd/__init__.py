"""syncd: keep a local folder backed up to a private, versioned S3-compatible bucket."""

__version__ = "0.1.0"
