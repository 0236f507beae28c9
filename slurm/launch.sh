# The launcher both sbatch templates share; sourced (never run) after the template's setup lines, with PYTHON and
# PROCS_PER_NODE set. `launch_step COMMAND ARGS...` runs `lorasweep COMMAND ARGS...` as the job's one step and
# exits with its status. `lorasweep ... --slurm` writes this file into the rendered script in its place.

# TASKS_PER_NODE > 1 (`sweep --slurm --workers K`): the step runs K one-process tasks per node, each through
# task_slot: its index among all the array's workers (LORASWEEP_WORKER_INDEX: its sampler seed, its label) and,
# where it sees several GPUs (--gpus-per-node: the tasks share them), GPU SLURM_LOCALID mod their number.
task_slot() {
  local gpus
  IFS=, read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
  if [ "${#gpus[@]}" -gt 0 ]; then export CUDA_VISIBLE_DEVICES="${gpus[$(( SLURM_LOCALID % ${#gpus[@]} ))]}"; fi
  export LORASWEEP_WORKER_INDEX=$(( ${SLURM_ARRAY_TASK_ID:-0} * TASKS_PER_NODE + SLURM_LOCALID ))
  exec "$@"
}

# One launcher per node (srun); `accelerate launch` starts PROCS_PER_NODE processes on each and joins them
# through a c10d rendezvous on the first node (ranks come from the rendezvous, so every node runs the same line).
launch_step() {
  local master_addr master_port threads nodes launch rc
  export TASKS_PER_NODE=${TASKS_PER_NODE:-1}
  master_addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  master_port=$((20000 + SLURM_JOB_ID % 20000))
  threads=$(( ${SLURM_CPUS_PER_TASK:-1} / PROCS_PER_NODE ))
  export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))
  nodes=${SLURM_JOB_NUM_NODES:-1}
  if [ "$nodes" -gt 1 ] || [ "$PROCS_PER_NODE" -gt 1 ]; then
    # --multi_gpu is Accelerate's torchrun launcher; on CPU-only nodes the trainer joins a gloo group instead.
    launch=("$PYTHON" -m accelerate.commands.launch --multi_gpu --num_machines="$nodes"
            --num_processes=$((nodes * PROCS_PER_NODE)) --main_process_ip="$master_addr"
            --main_process_port="$master_port" --rdzv_backend=c10d -m lorasweep.cli)
  else
    launch=("$PYTHON" -m lorasweep.cli)
  fi
  if [ "$TASKS_PER_NODE" -gt 1 ]; then
    launch=(bash -c "$(declare -f task_slot)"'; task_slot "$@"' task_slot "${launch[@]}")
  fi

  # USR1 (--signal, before the time limit): requeue this job now, which SLURM carries out like a preemption.
  # TERM (preemption, scontrol requeue, scancel) goes to every process of the step with scancel, not to srun
  # alone (srun answers TERM by killing the step at once): lorasweep checkpoints (a sweep worker also puts its
  # trial back in the queue) and exits.
  trap 'scontrol requeue "$SLURM_JOB_ID"' USR1
  trap 'scancel --quiet --signal=TERM "${SLURM_JOB_ID}.0" 2>/dev/null || kill -TERM $LAUNCH_PID 2>/dev/null' TERM
  srun --ntasks-per-node="$TASKS_PER_NODE" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 "${launch[@]}" "$@" &
  LAUNCH_PID=$!
  while kill -0 "$LAUNCH_PID" 2>/dev/null; do wait "$LAUNCH_PID"; done  # a trapped signal interrupts wait
  wait "$LAUNCH_PID"; rc=$?
  exit "$rc"
}
