#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munged, slurmctld, slurmd) on this machine, for the
# SLURM profile test. Needs root and Debian's packages.
#   bash .ci/slurm_setup.sh [start]   install, configure, start, wait until the node is idle
#   bash .ci/slurm_setup.sh stop      the same as .ci/slurm_teardown.sh
#
# The node offers fake GPUs (gres on character devices such as /dev/null), so `gpu=1` requests
# are scheduled for real on a CPU-only machine: SLURM hands each job its own device and runs
# no more GPU jobs at once than there are fake GPUs. No slurmdbd: sacct does not work, so the
# workflow polls squeue.
#
# Environment:
#   SLURM_CI_STATE_DIR   state, spool, logs and the recorded PIDs
#                        (default /var/tmp/refusal-ablation-slurm)
#   SLURM_CI_MIN_JOB_AGE seconds a finished job stays visible to squeue (default 300; keep it
#                        >= 3x the profile's slurm-init-seconds-before-status-checks)
#   SLURM_CI_GPUS        fake GPUs on the node (default 2, at most 5): two, so that the demo's
#                        one-thread GPU jobs keep both cores of a 2-core CI machine busy
#   SLURM_CI_NODE_CPUS, SLURM_CI_NODE_MEMORY_MB
#                        the size the node advertises (default 16 CPUs, 131072 MB): room for
#                        the profile's own requests, one GPU job's worth more than there are
#                        GPUs, so that only the GPUs keep GPU jobs apart. The machine may be
#                        smaller: this SLURM neither checks nor enforces CPU and memory limits.
set -euo pipefail

STATE_DIR="${SLURM_CI_STATE_DIR:-/var/tmp/refusal-ablation-slurm}"
MIN_JOB_AGE="${SLURM_CI_MIN_JOB_AGE:-300}"
# the job-step plugin drops SLURM_CONF, so the config must sit at the compiled-in path
SLURM_CONF_PATH=/etc/slurm/slurm.conf
MARKER="# written by refusal-ablation .ci/slurm_setup.sh"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { echo "[slurm_setup $(date +%T)] $*" >&2; }

case "${1:-start}" in
    start) ;;
    stop) exec bash "$HERE/slurm_teardown.sh" ;;
    *) log "usage: $0 [start|stop]"; exit 2 ;;
esac

if [[ $EUID -ne 0 ]]; then
    log "must run as root (installs packages, writes /etc/slurm)"
    exit 1
fi
if [[ -f "$SLURM_CONF_PATH" ]] && ! grep -qF "$MARKER" "$SLURM_CONF_PATH"; then
    log "$SLURM_CONF_PATH exists and was not written by this script: refusing to overwrite it"
    exit 1
fi

# a previous run's daemons would hold the ports and the state dir
if [[ -f "$STATE_DIR/pids" ]]; then
    log "stopping daemons left from a previous start"
    bash "$HERE/slurm_teardown.sh"
fi

t_install=$(date +%s)
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && [[ -x /usr/sbin/munged ]]; then
    log "slurm-wlm and munge already installed"
else
    log "installing slurm-wlm and munge with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm munge >/dev/null
fi
log "install step took $(($(date +%s) - t_install)) s"

host="$(hostname -s)"
cpus="${SLURM_CI_NODE_CPUS:-16}"
real_memory="${SLURM_CI_NODE_MEMORY_MB:-131072}"
gpus="${SLURM_CI_GPUS:-2}"
# one distinct character device per fake GPU: files that every Linux machine has
fake_gpu_devices=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom)
if ! [[ "$gpus" =~ ^[1-5]$ ]]; then
    log "SLURM_CI_GPUS must be 1 to ${#fake_gpu_devices[@]}, got '$gpus'"
    exit 1
fi

mkdir -p "$STATE_DIR"/{ctld,spool} /etc/slurm
rm -f "$STATE_DIR"/*.log "$STATE_DIR"/pids

cat >"$SLURM_CONF_PATH" <<EOF
$MARKER
# single-node test cluster; state under $STATE_DIR
ClusterName=refusalci
SlurmctldHost=${host}(127.0.0.1)
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MinJobAge=$MIN_JOB_AGE
SchedulerType=sched/backfill
# trust the node size below instead of draining a node that has less
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_memory} Gres=gpu:${gpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

cat >/etc/slurm/gres.conf <<EOF
$MARKER
# fake GPUs: let --gpus=N be scheduled on a machine without one
AutoDetect=off
EOF
for device in "${fake_gpu_devices[@]:0:$gpus}"; do
    echo "NodeName=${host} Name=gpu File=${device}" >>/etc/slurm/gres.conf
done

t_start_ns=$(date +%s%N)

if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating a munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
# munged refuses to start without its runtime dir, which nothing creates outside systemd
mkdir -p /run/munge
chown munge:munge /run/munge
chmod 0755 /run/munge
runuser -u munge -- /usr/sbin/munged
for _ in $(seq 100); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
done
munge -n | unmunge >/dev/null || { log "munged did not come up"; exit 1; }

/usr/sbin/slurmctld
/usr/sbin/slurmd

wait_for_pidfile() {
    local file=$1
    for _ in $(seq 100); do
        [[ -s "$file" ]] && kill -0 "$(cat "$file")" 2>/dev/null && return 0
        sleep 0.1
    done
    log "no live process behind $file"
    return 1
}
wait_for_pidfile /run/munge/munged.pid
wait_for_pidfile "$STATE_DIR/slurmctld.pid"
wait_for_pidfile "$STATE_DIR/slurmd.pid"
{
    echo "slurmd $(cat "$STATE_DIR/slurmd.pid")"
    echo "slurmctld $(cat "$STATE_DIR/slurmctld.pid")"
    echo "munged $(cat /run/munge/munged.pid)"
} >"$STATE_DIR/pids"

node_state=""
for _ in $(seq 300); do
    node_state="$(sinfo -h -N -n "$host" -o %T 2>/dev/null || true)"
    [[ "$node_state" == "idle" ]] && break
    sleep 0.1
done
if [[ "$node_state" != "idle" ]]; then
    log "node $host is '${node_state:-unknown}', not idle; logs:"
    tail -n 20 "$STATE_DIR/slurmctld.log" "$STATE_DIR/slurmd.log" >&2 || true
    exit 1
fi

log "daemons started and node idle after $((($(date +%s%N) - t_start_ns) / 1000000)) ms; PIDs:"
sed 's/^/    /' "$STATE_DIR/pids" >&2
sinfo -N -o "%N %T %c %m %G" >&2
