#!/usr/bin/env bash
# Stop the test cluster that .ci/slurm_setup.sh started: cancel its jobs, then end slurmd,
# slurmctld and munged by the PIDs it recorded (never by name).
set -uo pipefail

STATE_DIR="${SLURM_CI_STATE_DIR:-/var/tmp/refusal-ablation-slurm}"
PIDS_FILE="$STATE_DIR/pids"

log() { echo "[slurm_teardown $(date +%T)] $*" >&2; }

if [[ ! -f "$PIDS_FILE" ]]; then
    log "no $PIDS_FILE: nothing to stop"
    exit 0
fi

# jobs still queued or running would leave slurmstepd processes behind
if job_ids="$(squeue -h -o %A 2>/dev/null)" && [[ -n "$job_ids" ]]; then
    log "cancelling jobs: $(echo "$job_ids" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    scancel $job_ids || true
    for _ in $(seq 50); do
        [[ -z "$(squeue -h -t PD,R,CG -o %A 2>/dev/null)" ]] && break
        sleep 0.2
    done
fi

# PID reuse guard: only signal a PID whose command is still the daemon we started
stop_daemon() {
    local name=$1 pid=$2
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) already gone"
        return 0
    fi
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]]; then
        log "PID $pid is no longer $name: leaving it alone"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; return 0; }
        sleep 0.1
    done
    log "$name ($pid) ignored SIGTERM for 10 s: sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# recorded in stop order: slurmd, slurmctld, munged
while read -r name pid; do
    [[ -n "${name:-}" && -n "${pid:-}" ]] && stop_daemon "$name" "$pid"
done <"$PIDS_FILE"
rm -f "$PIDS_FILE"
