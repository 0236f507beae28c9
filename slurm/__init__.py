"""Packaged as lorasweep.slurm_templates: the sbatch templates lorasweep/cluster.py renders."""
