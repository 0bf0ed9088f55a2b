"""The tools that run studies of sparse_dqn: the result store (study.store), checkpoints
(study.checkpoints), book profiles (study.profiles), sweeps on this machine or on Slurm
(study.sweep), and the command line (study.cli)."""
