#!/bin/sh
# MOOD 2020 pixel task, abdominal CT: the DPA axis models along axes 0 and 2 (launch/mood/README.md).
# The organisers run: sh /workspace/run_pixel_abdom.sh /mnt/data /mnt/pred
# MOOD_MODELS overrides the folder of trained runs (default /workspace/models, as in the image),
# MOOD_BATCH_SIZE the slices per forward pass (default 128, as the submission).
set -eu
if [ "$#" -ne 2 ]; then
    echo "usage: sh $0 INPUT_DIR OUTPUT_DIR" >&2
    exit 2
fi
MODELS="${MOOD_MODELS:-/workspace/models}/abdom/pixel"
exec python -m jaxad.mood predict --task=pixel --input="$1" --output="$2" \
    --batch_size="${MOOD_BATCH_SIZE:-128}" \
    --models="$MODELS/axis_0,$MODELS/axis_2"
