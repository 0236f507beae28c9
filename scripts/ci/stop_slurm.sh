#!/usr/bin/env bash
# Stop what start_slurm.sh started (jobs first, then the daemons).
scancel --user="$(id -un)" >/dev/null 2>&1 || true
pkill -x slurmd >/dev/null 2>&1 || true
pkill -x slurmctld >/dev/null 2>&1 || true
pkill -x munged >/dev/null 2>&1 || true
true
