r"""Runs experiments.train as a local multi-process jax.distributed job.

Each process gets its own CPU devices (XLA's host-platform device count) and
joins the job through a coordinator on 127.0.0.1; collectives use gloo. This
is how multi-host code paths are exercised on one machine:

  python launch/local_multiprocess.py --num_processes=2 \
    --devices_per_process=4 -- --workdir=/tmp/mp --clients_per_round=8

Everything after ``--`` goes to every process's experiments.train. Output
of process 0 is shown; the others' goes to WORKDIR/process_<i>.log (or the
current directory). Exits non-zero if any process fails.
"""

import argparse
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=4)
  parser.add_argument('train_flags', nargs='*')
  args = parser.parse_args(argv)
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error('--num_processes and --devices_per_process must be >= 1.')
  workdir = next((f.split('=', 1)[1] for f in args.train_flags
                  if f.startswith('--workdir=')), '.')
  os.makedirs(workdir, exist_ok=True)
  address = f'127.0.0.1:{free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
      f'--xla_force_host_platform_device_count={args.devices_per_process}'))
  procs, logs = [], []
  for i in range(args.num_processes):
    command = [sys.executable, '-m', 'experiments.train',
               f'--coordinator_address={address}',
               f'--num_processes={args.num_processes}', f'--process_id={i}',
               *args.train_flags]
    out = None
    if i:
      out = open(os.path.join(workdir, f'process_{i}.log'), 'w')
      logs.append(out)
    procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT if out else None))
  codes = [p.wait() for p in procs]
  for log in logs:
    log.close()
  for i, code in enumerate(codes):
    if code:
      print(f'process {i} exited with status {code}', file=sys.stderr)
  return max(codes, key=abs)


if __name__ == '__main__':
  sys.exit(main())
