#!/usr/bin/env bash
# Creates, sets up, runs jaxad on, and deletes a Cloud TPU VM (one host or a pod slice).
#
#   TPU_NAME=l2v ZONE=us-west4-a WORKDIR=/mnt/disks/data/runs/l2v \
#     launch/tpu_vm.sh create|setup|run|logs|delete
#
# create, setup and run act on all workers of the slice. See launch/README.md for the whole recipe
# (data disk, dataset build, preemption). Settings, all from the environment:
#
#   TPU_NAME          name of the TPU VM (required)
#   ZONE              zone of the TPU VM (required)
#   PROJECT           project (default: gcloud's configured project)
#   ACCELERATOR_TYPE  slice type (default v5litepod-8: v5e, 8 chips, one host; v4-8 is one
#                     v4 host, v4-32 four hosts)
#   RUNTIME_VERSION   TPU software version (default v2-alpha-tpuv5-lite, for v5e; use
#                     tpu-ubuntu2204-base for v4, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e)
#   SPOT              1 to create a Spot VM (preemptible; rerun create+setup+run to resume)
#   DATA_DISK         a persistent disk to attach at creation, as projects/P/zones/Z/disks/D
#   DATA_DISK_MODE    read-write (one host only) or read-only (default; any slice)
#   DATA_MOUNT        where setup mounts DATA_DISK on every worker (default /mnt/disks/data)
#   DATA_DEVICE       its block device on the workers (default /dev/sdb)
#   REPO_URL          git URL to clone on the workers; unset: copy this checkout's tracked files
#   REPO_REF          what to check out with REPO_URL (default origin/HEAD; origin/main, a tag)
#   REMOTE_DIR        checkout on the workers, relative to the home directory (default jaxad)
#   VENV              virtual environment on the workers, relative to home (default jaxad-venv)
#   PYTHON_VERSION    Python of that environment (default 3.11; jax 0.10 needs 3.11 or newer)
#   CONFIG            experiment config (default configs/lesion2void.py)
#   WORKDIR           run directory, the same path on every worker (required by run); put it on
#                     a persistent disk (one host) or a shared file system (pod slice) so that
#                     checkpoints outlive the VM
#   DISTRIBUTED       True (default) or False: --config.distributed.enabled
#   EXTRA_ARGS        more flags for jaxad.main, e.g. "--config.data.data_dir=/mnt/disks/data/tfds"
#   LOG               log file on each worker, relative to home (default jaxad-run.log)
set -euo pipefail

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
SPOT="${SPOT:-0}"
DATA_DISK="${DATA_DISK:-}"
DATA_DISK_MODE="${DATA_DISK_MODE:-read-only}"
DATA_MOUNT="${DATA_MOUNT:-/mnt/disks/data}"
DATA_DEVICE="${DATA_DEVICE:-/dev/sdb}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-origin/HEAD}"
REMOTE_DIR="${REMOTE_DIR:-jaxad}"
VENV="${VENV:-jaxad-venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
CONFIG="${CONFIG:-configs/lesion2void.py}"
WORKDIR="${WORKDIR:-}"
DISTRIBUTED="${DISTRIBUTED:-True}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
LOG="${LOG:-jaxad-run.log}"

ARCHIVE=""
trap '[[ -z "${ARCHIVE}" ]] || rm -f "${ARCHIVE}"' EXIT

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

require() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "set $name (see launch/tpu_vm.sh --help)"
  done
}

# Common gcloud flags: zone and, when given, project.
gcloud_flags() {
  printf '%s\n' "--zone=${ZONE}"
  if [[ -n "${PROJECT:-}" ]]; then
    printf '%s\n' "--project=${PROJECT}"
  fi
}

# Runs a shell command on every worker of the slice.
on_all_workers() {
  local flags
  mapfile -t flags < <(gcloud_flags)
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${flags[@]}" --worker=all --command="$1"
}

cmd_create() {
  require TPU_NAME ZONE
  local flags args
  mapfile -t flags < <(gcloud_flags)
  args=(
    "--accelerator-type=${ACCELERATOR_TYPE}"
    "--version=${RUNTIME_VERSION}"
  )
  if [[ "${SPOT}" == "1" ]]; then
    args+=(--spot)
  fi
  if [[ -n "${DATA_DISK}" ]]; then
    args+=("--data-disk=source=${DATA_DISK},mode=${DATA_DISK_MODE}")
  fi
  gcloud compute tpus tpu-vm create "${TPU_NAME}" "${flags[@]}" "${args[@]}"
}

# Copies the code, creates the Python environment, installs jaxad with jax[tpu] and mounts the
# data disk, on every worker. Safe to run again (e.g. after changing the code).
cmd_setup() {
  require TPU_NAME ZONE
  local flags remote_dir venv script
  mapfile -t flags < <(gcloud_flags)
  remote_dir=$(printf '%q' "${REMOTE_DIR}")
  venv=$(printf '%q' "${VENV}")

  if [[ -n "${REPO_URL}" ]]; then
    local url ref
    url=$(printf '%q' "${REPO_URL}")
    ref=$(printf '%q' "${REPO_REF}")
    on_all_workers "set -euo pipefail; cd ~
      if [[ -d ${remote_dir}/.git ]]; then git -C ${remote_dir} fetch --quiet --tags origin
      else git clone --quiet ${url} ${remote_dir}; fi
      git -C ${remote_dir} checkout --quiet --detach ${ref}"
  else
    # The tracked files of this checkout, with their uncommitted edits.
    local root
    root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
    ARCHIVE=$(mktemp "${TMPDIR:-/tmp}/jaxad-XXXXXX")
    (cd "${root}" && git ls-files -z | tar --null -T - -czf "${ARCHIVE}")
    gcloud compute tpus tpu-vm scp "${ARCHIVE}" "${TPU_NAME}:jaxad.tar.gz" "${flags[@]}" \
      --worker=all
    on_all_workers "set -euo pipefail; cd ~; mkdir -p ${remote_dir}
      tar -xzf jaxad.tar.gz -C ${remote_dir}; rm jaxad.tar.gz"
  fi

  # jax 0.10 needs Python 3.11+, newer than some TPU images' python3: uv fetches it. The
  # second pip form is for images whose system Python refuses user installs (PEP 668).
  script="set -euo pipefail; cd ~
    python3 -m pip install --quiet --user --upgrade uv \
      || python3 -m pip install --quiet --user --upgrade --break-system-packages uv
    python3 -m uv venv --quiet --allow-existing --python $(printf '%q' "${PYTHON_VERSION}") ${venv}
    python3 -m uv pip install --quiet --python ${venv}/bin/python -e ./${remote_dir} 'jax[tpu]'
    ${venv}/bin/python -c 'import jax, jaxad; print(\"jax\", jax.__version__)'"
  on_all_workers "${script}"

  if [[ -n "${DATA_DISK}" ]]; then
    local mount device opts
    mount=$(printf '%q' "${DATA_MOUNT}")
    device=$(printf '%q' "${DATA_DEVICE}")
    opts="ro,noload"
    if [[ "${DATA_DISK_MODE}" == "read-write" ]]; then
      opts="rw,discard,defaults"
    fi
    on_all_workers "set -euo pipefail
      if ! mountpoint -q ${mount}; then sudo mkdir -p ${mount}
        sudo mount -o ${opts} ${device} ${mount}; fi
      if [[ ${opts} == rw* ]]; then sudo chmod a+w ${mount}; fi
      df -h ${mount}"
  fi
}

# Starts training on every worker in the background (output in ~/$LOG). Rerunning the same
# command resumes from the latest checkpoint in WORKDIR.
cmd_run() {
  require TPU_NAME ZONE WORKDIR
  local args q
  args=(
    -m jaxad.main
    "--config=${CONFIG}"
    "--workdir=${WORKDIR}"
    "--config.distributed.enabled=${DISTRIBUTED}"
  )
  printf -v q '%q ' "${args[@]}"
  # EXTRA_ARGS is split on spaces on purpose: it holds several flags.
  on_all_workers "set -euo pipefail; cd ~/$(printf '%q' "${REMOTE_DIR}")
    nohup \$HOME/$(printf '%q' "${VENV}")/bin/python ${q} ${EXTRA_ARGS} \
      > \$HOME/$(printf '%q' "${LOG}") 2>&1 < /dev/null &
    echo \"started on \$(hostname); log: ~/${LOG}\""
}

cmd_logs() {
  require TPU_NAME ZONE
  local flags
  mapfile -t flags < <(gcloud_flags)
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${flags[@]}" --worker=0 \
    --command="tail -n 50 -f \$HOME/$(printf '%q' "${LOG}")"
}

cmd_delete() {
  require TPU_NAME ZONE
  local flags
  mapfile -t flags < <(gcloud_flags)
  gcloud compute tpus tpu-vm delete "${TPU_NAME}" "${flags[@]}" --quiet
}

main() {
  case "${1:-}" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    run) cmd_run ;;
    logs) cmd_logs ;;
    delete) cmd_delete ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      die "unknown command '${1:-}': use create, setup, run, logs or delete"
      ;;
  esac
}

main "$@"
