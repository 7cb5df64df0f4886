#!/usr/bin/env python3
"""Fit a store out of core with its chunk scoring spread over a Dask cluster on Slurm.

``dask-jobqueue``'s ``SLURMCluster`` submits Dask workers as Slurm jobs; this script
starts one, waits for its workers, and runs the real CLI against it:

    intstream fit STORE -o RUN --out-of-core --scheduler tcp://HOST:PORT --resume

so each round's chunk tasks (score, draw, error sums; DESIGN §6) run on the workers while
the optimiser steps here. The store and the run directory must be on a file system the
workers also see (or a URL they reach: ``s3://``, ``http(s)://`` read-only). A killed job
resumes from RUN's checkpoint: run the script again with the same RUN.

    pip install '.[cluster]'   # dask-jobqueue + distributed
    python examples/dask_cluster.py /scratch/scan.zarr /scratch/scan.run \\
        --jobs 4 --cores 8 --memory 32GB --walltime 02:00:00 --queue compute

``--dry-run`` prints the job script each worker is submitted with, and submits nothing.
``--local N`` uses a ``distributed.LocalCluster`` of N worker processes instead (no Slurm:
a laptop or a test). Options after ``--`` go to ``intstream fit`` unchanged, e.g.
``-- --time-budget 3600 --memory-budget 8G``. The fit manifest goes to stdout, as from
``intstream fit`` itself; the script exits with fit's exit code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def make_cluster(args):
    """A SLURMCluster scaled to ``--jobs`` jobs, or a LocalCluster of ``--local`` workers."""
    if args.local:
        from distributed import LocalCluster

        return LocalCluster(n_workers=args.local, threads_per_worker=1, processes=True,
                            dashboard_address=None)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        sys.exit("dask_cluster.py: dask-jobqueue is not installed (pip install 'intstream[cluster]'), "
                 "or use --local N")
    cluster = SLURMCluster(cores=args.cores, processes=1, memory=args.memory, walltime=args.walltime,
                           queue=args.queue, account=args.account,
                           job_extra_directives=list(args.job_extra))
    if args.dry_run:  # the batch script each worker job would be submitted with
        print(cluster.job_script())
        cluster.close()
        sys.exit(0)
    cluster.scale(jobs=args.jobs)
    return cluster


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("run")
    p.add_argument("--jobs", type=int, default=2, help="Slurm jobs (one Dask worker each)")
    p.add_argument("--cores", type=int, default=8, help="cores per job")
    p.add_argument("--memory", default="32GB", help="memory per job")
    p.add_argument("--walltime", default="02:00:00")
    p.add_argument("--queue", default=None, help="Slurm partition")
    p.add_argument("--account", default=None)
    p.add_argument("--job-extra", action="append", default=[], help="extra #SBATCH line, e.g. --gres=gpu:1")
    p.add_argument("--local", type=int, default=0, metavar="N", help="a LocalCluster of N workers instead")
    p.add_argument("--dry-run", action="store_true", help="print the workers' Slurm job script and exit")
    p.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the first worker")
    args, fit_args = p.parse_known_args(argv)
    if fit_args[:1] == ["--"]:
        fit_args = fit_args[1:]

    from distributed import Client

    with make_cluster(args) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=args.wait)
        print(f"dask_cluster.py: scheduler {cluster.scheduler_address}, "
              f"{len(client.scheduler_info()['workers'])} worker(s)", file=sys.stderr)
        cmd = ["intstream", "fit", args.store, "-o", args.run, "--out-of-core",
               "--scheduler", cluster.scheduler_address, "--resume", *fit_args]
        return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
