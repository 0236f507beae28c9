#!/usr/bin/env bash
# Install (if needed) and start a single-node SLURM from Debian's packages for the SLURM tests:
# munged, slurmctld and slurmd with state under ${SLURM_ROOT:-/tmp/lorasweep-slurm}. No cgroups are needed
# (proctrack/linuxproc, task/none). Waits until `sinfo` shows the node idle; prints the partition as the last line.
set -euo pipefail
SLURM_ROOT=${SLURM_ROOT:-/tmp/lorasweep-slurm}
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 3 / 4 ))
mkdir -p "$SLURM_ROOT"/{state,spool,log} /etc/slurm /run/munge /etc/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=lorasweep-ci
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SLURM_ROOT/state
SlurmdSpoolDir=$SLURM_ROOT/spool
SlurmctldPidFile=$SLURM_ROOT/slurmctld.pid
SlurmdPidFile=$SLURM_ROOT/slurmd.pid
SlurmctldLogFile=$SLURM_ROOT/log/slurmctld.log
SlurmdLogFile=$SLURM_ROOT/log/slurmd.log
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
# Batch jobs are requeueable unless they say otherwise (the templates say --requeue anyway).
JobRequeue=1
MinJobAge=600
KillWait=30
# Jobs that ask no memory get a CPU's share, so array tasks run side by side (not one per node).
DefMemPerCPU=$(( MEM_MB / CPUS ))
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
pgrep -x munged >/dev/null || su munge -s /bin/sh -c "/usr/sbin/munged" || /usr/sbin/munged --force
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo -h -o '%T' 2>/dev/null | grep -qx idle; then
    echo debug
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up: $(sinfo 2>&1 | tail -1)" >&2
tail -5 "$SLURM_ROOT"/log/*.log >&2 || true
exit 1
