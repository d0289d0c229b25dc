"""Video decoding, frame sampling, annotation readers, the synthetic benchmark and the datamodule."""
