"""Weights of the original PyTorch implementations <-> jaxad networks and run directories.

- `files`: `.safetensors` / `.npz` readers and writers (never pickle);
- `core`: a network's rename table and the strict conversion of one state dict;
- one module per method with its networks as the original names them (`lesion2void`, `dpa`,
  `simclr`, `picard`, `morphaeus`, `lesioncl`, `dr_grading`), each exposing `networks(config)`
  (and optionally `not_converted(config)`): a method is added by adding its module;
- `runs`: a run directory from converted weights, and the export of a run;
- `python -m jaxad.convert` (`__main__`): the command line.

This package imports nothing heavy at import time: the model weight readers
(`jaxad.models.vgg_weights`) use `files`.
"""
