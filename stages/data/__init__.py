"""Datasets and images: discovery (MVTec-AD, BTAD), decoding and resizing, the validation split and its synthetic
defects, the built-in synthetic dataset."""
