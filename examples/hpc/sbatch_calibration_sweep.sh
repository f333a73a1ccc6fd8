#!/bin/bash
# A calibration sweep on one SLURM node with the process strategy.
#
#   sbatch sbatch_calibration_sweep.sh            # on the cluster
#   bash sbatch_calibration_sweep.sh --local      # here, a small sweep without SLURM
#
# ce-parallel reads SLURM_CPUS_PER_TASK: with --cpus-per-task=16 the sweep runs 16 workers,
# whatever the node has (a 64-core node shared with other jobs still gets 16).
#SBATCH --job-name=ce-calibration-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=16G
#SBATCH --time=01:00:00
#SBATCH --output=calibration-sweep-%j.out
set -euo pipefail

PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# under sbatch the script is a copy in the spool directory: use the submit directory instead
if [[ -n "${SLURM_SUBMIT_DIR:-}" && ! -f "$HERE/calibration_sweep.py" ]]; then
    HERE="$SLURM_SUBMIT_DIR"
fi
# results and telemetry: the submit directory on the cluster; a new temporary folder with
# --local, so that a demo run leaves nothing in the folder it was started from
if [[ -z "${OUT_DIR:-}" ]]; then
    if [[ -n "${SLURM_SUBMIT_DIR:-}" ]]; then
        OUT_DIR="$SLURM_SUBMIT_DIR"
    elif [[ "${1:-}" == "--local" ]]; then
        OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ce-parallel-sweep-XXXXXX")"
    else
        OUT_DIR="$PWD"
    fi
fi
RUN_ID="${SLURM_JOB_ID:-local}"

# The operator's controls: parallel on, the process strategy (outside the conservative subset,
# hence the full matrix), and one JSON line per decision / run / fallback.
export CE_PARALLEL="${CE_PARALLEL:-on,processes}"
export CE_PARALLEL_FULL="${CE_PARALLEL_FULL:-1}"
export CE_PARALLEL_TELEMETRY="${CE_PARALLEL_TELEMETRY:-$OUT_DIR/telemetry-$RUN_ID.jsonl}"

ARGS=(--out "$OUT_DIR/calibration-sweep-$RUN_ID.csv")
if [[ "${1:-}" == "--local" ]]; then
    "$PYTHON" "$HERE/calibration_sweep.py" --local "${ARGS[@]}"
else
    # one task on one node; ce-parallel starts its worker processes inside this allocation
    srun --ntasks=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
        "$PYTHON" "$HERE/calibration_sweep.py" "${ARGS[@]}"
fi
