"""Packaged as lorasweep.slurm_templates: the sbatch templates and their shared launcher (launch.sh) that
lorasweep/slurm/render.py renders."""
