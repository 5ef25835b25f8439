#!/usr/bin/env bash
# Creates, sets up, builds data on, runs jaxad on, and deletes a Cloud TPU VM (one host or a
# pod slice), for any method of configs/.
#
#   METHOD=lesion2void TPU_NAME=l2v ZONE=us-west4-a WORKDIR=gs://BUCKET/runs/l2v \
#     launch/tpu_vm.sh [--dry-run] create|setup|build|run|logs|status|list|delete
#
#   create  a TPU VM (tpu-vm create; --spot with SPOT=1), or with QUEUED=1 a queued resource
#           that creates it when capacity is free (queued-resources create; Spot with SPOT=1)
#   setup   copies the code, installs jaxad and jax[tpu] on every worker, mounts DATA_DISK
#   build   builds the method's tfds datasets (DATASETS) from MANUAL_DIR on worker 0
#   run     starts training on every worker in the background; rerun it to resume
#   logs    follows worker 0's log
#   status  describes the TPU VM (QUEUED=1: the queued resource and its state)
#   list    lists the TPU VMs of the zone (QUEUED=1: its queued resources)
#   delete  deletes the TPU VM (QUEUED=1: the queued resource and the VM it created)
#
# --dry-run (or DRY_RUN=1) prints the commands, one per line, instead of running them. See
# launch/README.md for the whole recipe (data, pod slices, preemption). Settings, all from the
# environment:
#
#   METHOD            lesion2void (default), picard, simclr_vgg19, dpa, morphaeus, lesioncl or
#                     dr_grading: sets CONFIG and DATASETS
#   VARIANT           the config's variant (configs/<METHOD>.py:VARIANT); dpa's default is
#                     brain_pixel_axis0
#   CONFIG            experiment config (default configs/<METHOD>.py[:VARIANT])
#   DATASETS          tfds datasets that build prepares, space-separated (default: the method's)
#   TPU_NAME          name of the TPU VM (required)
#   ZONE              zone of the TPU VM (required)
#   PROJECT           project (default: gcloud's configured project)
#   ACCELERATOR_TYPE  slice type (default v5litepod-8: v5e, 8 chips, one host; v4-8 is one
#                     v4 host, v4-32 four hosts)
#   RUNTIME_VERSION   TPU software version (default v2-alpha-tpuv5-lite, for v5e; use
#                     tpu-ubuntu2204-base for v4, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e)
#   SPOT              1 for Spot capacity (preemptible; see launch/README.md to resume)
#   QUEUED            1: create, status, list and delete act on a queued resource
#   QUEUED_NAME       the queued resource's name (default ${TPU_NAME}-qr)
#   VALID_UNTIL       how long a queued request may wait, e.g. 6h (default: no limit)
#   DATA_DISK         a persistent disk to attach at creation, as projects/P/zones/Z/disks/D
#   DATA_DISK_MODE    read-write (one host only) or read-only (default; any slice)
#   DATA_MOUNT        where setup mounts DATA_DISK on every worker (default /mnt/disks/data)
#   DATA_DEVICE       its block device on the workers (default /dev/sdb)
#   REPO_URL          git URL to clone on the workers; unset: copy this checkout's tracked files
#   REPO_REF          what to check out with REPO_URL (default origin/HEAD; origin/main, a tag)
#   REMOTE_DIR        checkout on the workers, relative to the home directory (default jaxad)
#   VENV              virtual environment on the workers, relative to home (default jaxad-venv)
#   PYTHON_VERSION    Python of that environment (default 3.11; jax 0.10 needs 3.11 or newer)
#   EXTRAS            jaxad's extras to install (default gcs: gs:// paths; '' for none)
#   DATA_DIR          tfds data directory (a gs:// URL or a path on every worker): build writes
#                     there, run reads there (--config.data.data_dir)
#   MANUAL_DIR        the raw files build reads, on worker 0, relative to its home directory
#                     unless absolute (required by build)
#   WORKDIR           run directory (required by run): a gs:// URL, or the same path on every
#                     worker on a persistent disk or shared file system, so that checkpoints
#                     outlive the VM
#   VGG_WEIGHTS       dpa: the SimCLR run's workdir (required: train simclr_vgg19 first);
#                     morphaeus: a file of ImageNet VGG19 weights (optional)
#   BOXES             lesioncl: the lesion box file (required)
#   IMAGENET_WEIGHTS  lesioncl, dr_grading: a file of ImageNet ResNet-50 weights (optional)
#   INIT_FROM         dr_grading: the lesioncl run to start from (optional)
#   DISTRIBUTED       True (default) or False: --config.distributed.enabled
#   EXTRA_ARGS        more flags for jaxad.main, e.g. "--config.batch_size=64"
#   LOG               log file on each worker, relative to home (default jaxad-run.log)
set -euo pipefail

METHOD="${METHOD:-lesion2void}"
VARIANT="${VARIANT:-}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
SPOT="${SPOT:-0}"
QUEUED="${QUEUED:-0}"
VALID_UNTIL="${VALID_UNTIL:-}"
DATA_DISK="${DATA_DISK:-}"
DATA_DISK_MODE="${DATA_DISK_MODE:-read-only}"
DATA_MOUNT="${DATA_MOUNT:-/mnt/disks/data}"
DATA_DEVICE="${DATA_DEVICE:-/dev/sdb}"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-origin/HEAD}"
REMOTE_DIR="${REMOTE_DIR:-jaxad}"
VENV="${VENV:-jaxad-venv}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
EXTRAS="${EXTRAS-gcs}"
DATA_DIR="${DATA_DIR:-}"
MANUAL_DIR="${MANUAL_DIR:-}"
WORKDIR="${WORKDIR:-}"
DISTRIBUTED="${DISTRIBUTED:-True}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
LOG="${LOG:-jaxad-run.log}"
DRY_RUN="${DRY_RUN:-0}"

ARCHIVE=""
trap '[[ -z "${ARCHIVE}" || "${DRY_RUN}" == "1" ]] || rm -f "${ARCHIVE}"' EXIT

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

# Prints its arguments as one shell command line: each quoted only where the shell needs it.
quote_command() {
  local arg out=()
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_@%+=:,./~-]+$ ]]; then
      out+=("${arg}")
    elif [[ "${arg}" =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then # --flag='value'
      out+=("${BASH_REMATCH[1]}'${BASH_REMATCH[2]//\'/\'\\\'\'}'")
    else
      out+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# Runs gcloud with these arguments, or with --dry-run prints the command instead.
gc() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    quote_command gcloud "$@"
  else
    gcloud "$@"
  fi
}

# The method's config and the tfds datasets it reads (`python -m jaxad.data.build NAME`).
method_defaults() {
  local config="configs/${METHOD}.py" datasets
  case "${METHOD}" in
    lesion2void) datasets="eyeq/good" ;;
    picard) datasets="duke_dbt/slices" ;;
    simclr_vgg19)
      datasets="mood/brain_axis0 mood/brain_axis1 mood/brain_axis2"
      datasets+=" mood/abdom_axis0 mood/abdom_axis1 mood/abdom_axis2"
      ;;
    dpa)
      VARIANT="${VARIANT:-brain_pixel_axis0}"
      # brain_pixel_axis0 reads mood/brain_axis0.
      datasets="mood/${VARIANT%%_*}_axis${VARIANT##*_axis}"
      ;;
    morphaeus)
      datasets="covid19_radiography/morphaeus"
      if [[ "${VARIANT}" == "rsna" ]]; then datasets="rsna_pneumonia/256"; fi
      ;;
    lesioncl | dr_grading) datasets="eyepacs" ;;
    *)
      die "unknown METHOD '${METHOD}': use lesion2void, picard, simclr_vgg19, dpa, morphaeus," \
        "lesioncl or dr_grading (or set CONFIG and DATASETS)"
      ;;
  esac
  if [[ -n "${VARIANT}" ]]; then config+=":${VARIANT}"; fi
  if [[ "${VARIANT}" == demo* ]]; then datasets=""; fi # Demo data are generated locally.
  CONFIG="${CONFIG:-${config}}"
  DATASETS="${DATASETS:-${datasets}}"
}

# Stops when the method lacks an input it cannot train without.
check_method_inputs() {
  case "${METHOD}" in
    dpa)
      [[ -n "${VGG_WEIGHTS:-}" ]] \
        || die "set VGG_WEIGHTS to the SimCLR run's workdir (METHOD=dpa: train simclr_vgg19 first)"
      ;;
    lesioncl) [[ -n "${BOXES:-}" ]] || die "set BOXES to the lesion box file (METHOD=lesioncl)" ;;
  esac
}

# The method's own flags for jaxad.main, from VGG_WEIGHTS, BOXES, ..., into METHOD_ARGS.
METHOD_ARGS=()
set_method_args() {
  local -A flags=(
    [dpa:VGG_WEIGHTS]=dpa.vgg_weights
    [morphaeus:VGG_WEIGHTS]=morphaeus.vgg_weights
    [lesioncl:BOXES]=data.boxes
    [lesioncl:IMAGENET_WEIGHTS]=lcl.imagenet_weights
    [dr_grading:INIT_FROM]=init_from.workdir
    [dr_grading:IMAGENET_WEIGHTS]=grading.imagenet_weights
  )
  local name
  for name in VGG_WEIGHTS BOXES IMAGENET_WEIGHTS INIT_FROM; do
    if [[ -n "${flags[${METHOD}:${name}]:-}" && -n "${!name:-}" ]]; then
      METHOD_ARGS+=("--config.${flags[${METHOD}:${name}]}=${!name}")
    fi
  done
}

# Common gcloud flags: zone and, when given, project (set in main, once the settings are known).
FLAGS=()
set_gcloud_flags() {
  FLAGS=("--zone=${ZONE:-}")
  if [[ -n "${PROJECT:-}" ]]; then
    FLAGS+=("--project=${PROJECT}")
  fi
}

# Runs a shell command (one line) on the workers: all, or the one given as $2.
on_workers() {
  gc compute tpus tpu-vm ssh "${TPU_NAME}" "${FLAGS[@]}" "--worker=${2:-all}" --command="$1"
}

queued_name() {
  printf '%s' "${QUEUED_NAME:-${TPU_NAME}-qr}"
}

cmd_create() {
  require TPU_NAME ZONE
  local args
  args=("--accelerator-type=${ACCELERATOR_TYPE}")
  if [[ -n "${DATA_DISK}" ]]; then
    args+=("--data-disk=source=${DATA_DISK},mode=${DATA_DISK_MODE}")
  fi
  if [[ "${SPOT}" == "1" ]]; then
    args+=(--spot)
  fi
  if [[ "${QUEUED}" == "1" ]]; then
    if [[ -n "${VALID_UNTIL}" ]]; then
      args+=("--valid-until-duration=${VALID_UNTIL}")
    fi
    gc compute tpus queued-resources create "$(queued_name)" "${FLAGS[@]}" \
      "--node-id=${TPU_NAME}" "--runtime-version=${RUNTIME_VERSION}" "${args[@]}"
  else
    gc compute tpus tpu-vm create "${TPU_NAME}" "${FLAGS[@]}" \
      "--version=${RUNTIME_VERSION}" "${args[@]}"
  fi
}

cmd_status() {
  require TPU_NAME ZONE
  if [[ "${QUEUED}" == "1" ]]; then
    gc compute tpus queued-resources describe "$(queued_name)" "${FLAGS[@]}"
  else
    gc compute tpus tpu-vm describe "${TPU_NAME}" "${FLAGS[@]}"
  fi
}

cmd_list() {
  require ZONE
  if [[ "${QUEUED}" == "1" ]]; then
    gc compute tpus queued-resources list "${FLAGS[@]}"
  else
    gc compute tpus tpu-vm list "${FLAGS[@]}"
  fi
}

# Copies the code, creates the Python environment, installs jaxad with jax[tpu] and mounts the
# data disk, on every worker. Safe to run again (e.g. after changing the code).
cmd_setup() {
  require TPU_NAME ZONE
  local remote_dir venv
  remote_dir=$(printf '%q' "${REMOTE_DIR}")
  venv=$(printf '%q' "${VENV}")

  if [[ -n "${REPO_URL}" ]]; then
    local url ref
    url=$(printf '%q' "${REPO_URL}")
    ref=$(printf '%q' "${REPO_REF}")
    on_workers "set -euo pipefail; cd ~; if [[ -d ${remote_dir}/.git ]];\
 then git -C ${remote_dir} fetch --quiet --tags origin;\
 else git clone --quiet ${url} ${remote_dir}; fi;\
 git -C ${remote_dir} checkout --quiet --detach ${ref}"
  else
    # The tracked files of this checkout, with their uncommitted edits.
    local root
    root=$(cd "$(dirname "$0")/.." && pwd)
    if [[ "${DRY_RUN}" == "1" ]]; then
      ARCHIVE="${TMPDIR:-/tmp}/jaxad-src.tar.gz"
      printf '(cd %q && git ls-files -z | tar --null -T - -czf %q)\n' "${root}" "${ARCHIVE}"
    else
      root=$(git -C "${root}" rev-parse --show-toplevel)
      ARCHIVE=$(mktemp "${TMPDIR:-/tmp}/jaxad-XXXXXX")
      (cd "${root}" && git ls-files -z | tar --null -T - -czf "${ARCHIVE}")
    fi
    gc compute tpus tpu-vm scp "${ARCHIVE}" "${TPU_NAME}:jaxad.tar.gz" "${FLAGS[@]}" \
      --worker=all
    on_workers "set -euo pipefail; cd ~; mkdir -p ${remote_dir};\
 tar -xzf jaxad.tar.gz -C ${remote_dir}; rm jaxad.tar.gz"
  fi

  # jax 0.10 needs Python 3.11+, newer than some TPU images' python3: uv fetches it. The
  # second pip form is for images whose system Python refuses user installs (PEP 668).
  on_workers "set -euo pipefail; cd ~;\
 python3 -m pip install --quiet --user --upgrade uv\
 || python3 -m pip install --quiet --user --upgrade --break-system-packages uv;\
 python3 -m uv venv --quiet --allow-existing --python $(printf '%q' "${PYTHON_VERSION}") ${venv};\
 python3 -m uv pip install --quiet --python ${venv}/bin/python -e \"./${remote_dir}${EXTRAS:+[${EXTRAS}]}\"\
 'jax[tpu]';\
 ${venv}/bin/python -c 'import jax, jaxad; print(\"jax\", jax.__version__)'"

  if [[ -n "${DATA_DISK}" ]]; then
    local mount device opts
    mount=$(printf '%q' "${DATA_MOUNT}")
    device=$(printf '%q' "${DATA_DEVICE}")
    opts="ro,noload"
    if [[ "${DATA_DISK_MODE}" == "read-write" ]]; then
      opts="rw,discard,defaults"
    fi
    on_workers "set -euo pipefail; if ! mountpoint -q ${mount};\
 then sudo mkdir -p ${mount}; sudo mount -o ${opts} ${device} ${mount}; fi;\
 if [[ ${opts} == rw* ]]; then sudo chmod a+w ${mount}; fi; df -h ${mount}"
  fi
}

# Builds the method's tfds datasets on worker 0 (already built ones are skipped), in the
# foreground: this can take hours for the full datasets.
cmd_build() {
  require TPU_NAME ZONE MANUAL_DIR
  [[ -n "${DATASETS// /}" ]] || die "nothing to build for CONFIG=${CONFIG}: set DATASETS"
  local name manual data script
  manual="--manual_dir=$(printf '%q' "${MANUAL_DIR}")"
  if [[ "${MANUAL_DIR}" != /* && "${MANUAL_DIR}" != *://* ]]; then
    manual="--manual_dir=\$HOME/$(printf '%q' "${MANUAL_DIR}")" # Relative to home.
  fi
  data=""
  if [[ -n "${DATA_DIR}" ]]; then data=" $(printf '%q' "--data_dir=${DATA_DIR}")"; fi
  script="set -euo pipefail; cd ~/$(printf '%q' "${REMOTE_DIR}")"
  for name in ${DATASETS}; do
    script+="; \$HOME/$(printf '%q' "${VENV}")/bin/python -m jaxad.data.build"
    script+=" $(printf '%q' "${name}") ${manual}${data}"
  done
  on_workers "${script}" 0
}

# Starts training on every worker in the background (output in ~/$LOG). Rerunning the same
# command resumes from the latest checkpoint in WORKDIR.
cmd_run() {
  require TPU_NAME ZONE WORKDIR
  check_method_inputs
  set_method_args
  local args q
  args=(
    -m jaxad.main
    "--config=${CONFIG}"
    "--workdir=${WORKDIR}"
    "--config.distributed.enabled=${DISTRIBUTED}"
  )
  if [[ -n "${DATA_DIR}" ]]; then args+=("--config.data.data_dir=${DATA_DIR}"); fi
  args+=("${METHOD_ARGS[@]}")
  printf -v q '%q ' "${args[@]}"
  # EXTRA_ARGS is split on spaces on purpose: it holds several flags.
  on_workers "set -euo pipefail; cd ~/$(printf '%q' "${REMOTE_DIR}");\
 nohup \$HOME/$(printf '%q' "${VENV}")/bin/python ${q% }${EXTRA_ARGS:+ ${EXTRA_ARGS}}\
 > \$HOME/$(printf '%q' "${LOG}") 2>&1 < /dev/null &\
 echo \"started on \$(hostname); log: ~/${LOG}\""
}

cmd_logs() {
  require TPU_NAME ZONE
  on_workers "tail -n 50 -f \$HOME/$(printf '%q' "${LOG}")" 0
}

cmd_delete() {
  require TPU_NAME ZONE
  if [[ "${QUEUED}" == "1" ]]; then
    # --force also deletes the TPU VM the request created.
    gc compute tpus queued-resources delete "$(queued_name)" "${FLAGS[@]}" --force --quiet
  else
    gc compute tpus tpu-vm delete "${TPU_NAME}" "${FLAGS[@]}" --quiet
  fi
}

main() {
  local command=""
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      -h | --help | help)
        usage
        return 0
        ;;
      -*) die "unknown option '$1': use --dry-run or --help" ;;
      *)
        [[ -z "${command}" ]] || die "one command at a time, not '${command}' and '$1'"
        command="$1"
        ;;
    esac
    shift
  done
  method_defaults
  set_gcloud_flags
  case "${command}" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    build) cmd_build ;;
    run) cmd_run ;;
    logs) cmd_logs ;;
    status) cmd_status ;;
    list) cmd_list ;;
    delete) cmd_delete ;;
    *)
      die "unknown command '${command}': use create, setup, build, run, logs, status, list" \
        "or delete"
      ;;
  esac
}

main "$@"
