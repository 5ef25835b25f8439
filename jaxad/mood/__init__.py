"""The MOOD 2020 challenge (Medical Out-of-Distribution Analysis): tools around the DPA solution.

``python -m jaxad.mood {predict,evaluate,synth}`` (see `jaxad.mood.__main__`):

- `jaxad.mood.metric`: the organisers' evaluation (pooled average precision over voxels or
  cases, float16 read-back, clipping), exact and in constant memory.
- `jaxad.mood.synth`: the solution's synthetic validation set (blended rotated ellipsoids) in the
  organisers' toy-label layout.
- `jaxad.mood.inference`: trained axis models -> pixel maps or sample scores for a folder of
  volumes, in the challenge's output format.
"""
