"""One process of a two-process data-parallel job on 127.0.0.1 (run by test_parallel.py).

argv: process_id port fundus_root tmp_dir. Trains the tiny config for 2 steps with
`jax.distributed`, then checks that one data-parallel step over both processes equals the same
step on this process's device alone with the whole batch.
"""

import sys

import jax
import numpy as np
from conftest import fake_batch, tiny_config

from jaxad import methods, parallel, train

pid, port, root, tmp = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
config = tiny_config(root, total_steps=2)
config.distributed.enabled = True
config.distributed.coordinator_address = f"127.0.0.1:{port}"
config.distributed.num_processes = 2
config.distributed.process_id = pid
results = train.run(config, f"{tmp}/run")
assert jax.process_count() == 2 and jax.device_count() == 2
assert results["num_images"] == 16, results

method = methods.create(config)
full = fake_batch()
mine = {k: v[4 * pid : 4 * pid + 4] for k, v in full.items()}
both = parallel.make_mesh()
state = methods.init_state(method, config, both, 4)
state, _ = train.make_train_step(method, config, both)(state, parallel.global_batch(both, mine), 1)
together = jax.device_get(state)
alone_mesh = parallel.make_mesh(jax.local_devices())
state = methods.init_state(method, config, alone_mesh, 8)
step = train.make_train_step(method, config, alone_mesh)
state, _ = step(state, parallel.global_batch(alone_mesh, full), 1)
alone = jax.device_get(state)
# The two runs reduce in another order, so float32 noise differs; one Adam step turns the noise of
# a near-zero gradient element into up to lr (g / (|g| + eps)). So: the share of elements that
# differ by more than 1e-5 + 1e-4 |b| (a wrong reduction would make most of them differ), and,
# for information, the largest difference and where.
pairs = list(
    zip(jax.tree_util.tree_leaves_with_path(together), jax.tree.leaves(alone), strict=True)
)
off = sum(int(np.sum(np.abs(a - b) > 1e-5 + 1e-4 * np.abs(b))) for (_, a), b in pairs)
total = sum(np.size(b) for _, b in pairs)
diff, where = max((float(np.max(np.abs(a - b))), jax.tree_util.keystr(k)) for (k, a), b in pairs)
print(f"MISMATCH {off / total} of {total}; MAXDIFF {diff} at {where}")
print(f"PROCESS {pid} OF 2 OK")
