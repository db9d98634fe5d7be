"""Images in, model input out: ``decode`` (one file -> preprocessed array), ``sets`` (folders and
definition files of images, labels, the calibration cache), ``synthetic`` (seeded random inputs)."""
