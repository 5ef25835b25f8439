"""`python -m jaxad.bench`: every method compared on the same data (quality) and shapes (speed).

- `quality` (`jaxad.bench.quality`): trains and evaluates each anomaly-map method and the two
  baselines on each built-in 2-D demo dataset, or on a folder or tfds dataset a user names, with
  one budget per dataset, over several seeds; one JSON and one Markdown table.
- `speed` (`jaxad.bench.speed`): each method's training step and scoring at its paper size, timed
  with shared code (compile apart, medians, CPU time, FLOPs, memory, the machine's other load);
  one JSON and one Markdown table.
"""
