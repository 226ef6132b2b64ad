"""spectrograms stage."""
