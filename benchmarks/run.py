r"""Side-by-side benchmark of fedjax_ext against FedJAX, PyTorch and Flower.

One command runs every system on identical data sizes, each configuration in
a fresh subprocess (the peers in their own virtualenvs, see
`benchmarks/setup_venvs.sh`), and writes BENCHMARKS.md, a PNG and the raw
results as JSON:

  bash benchmarks/setup_venvs.sh          # once: /work/venvs/{fedjax,torch,flower}
  python -m benchmarks.run                # W1, W2, W3, all systems

Workloads (synthetic random data of the real shapes; FedAvg, client SGD
lr 0.1, server SGD lr 1):

* W1: EMNIST-shaped CNN (28x28x1, 62 classes), 10 clients/round x 200
  examples, batch 20, one local epoch (10 steps per client).
* W2: LEAF-Synthetic-shaped logistic regression and MLP (64 hidden),
  60 features, 10 classes, 100 clients/round, 20 local steps of batch 10.
* W3: W2's logistic regression with 10, 100, 1,000 and 10,000 clients.

Systems: ``ours`` (every strategy of `fedjax_ext.core.STRATEGIES` found at
run time, with unroll variants for W1), ``limit`` (the same SGD steps as
separately jitted single steps in our JAX: the machine limit), ``fedjax``
(FedJAX 0.0.17 on jax 0.4.13), ``torch`` (a plain PyTorch loop) and
``flower`` (Flower's Ray simulation engine with the same PyTorch model).

``--quick`` runs only our own systems on tiny sizes (the smoke test).
Bad flags exit with status 2 and a one-line ``error: ...``.
"""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags

from benchmarks import _report
from experiments._cli import fail
from experiments._cli import parse_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.join(ROOT, 'benchmarks')
WORKLOADS = ('W1', 'W2', 'W3')
SYSTEMS = ('ours', 'limit', 'fedjax', 'torch', 'flower')
PEERS = ('fedjax', 'torch', 'flower')
_WORKER = {'ours': 'worker_ours.py', 'limit': 'worker_ours.py',
           'fedjax': 'worker_fedjax.py', 'torch': 'worker_torch.py',
           'flower': 'worker_flower.py'}

flags.DEFINE_list('workloads', list(WORKLOADS),
                  f'Workloads to run: {", ".join(WORKLOADS)}.')
flags.DEFINE_list('systems', list(SYSTEMS),
                  f'Systems to run: {", ".join(SYSTEMS)}.')
flags.DEFINE_list('strategies', [],
                  'Our execution strategies (default: every entry of '
                  'fedjax_ext.core.STRATEGIES at run time).')
flags.DEFINE_list('w3_strategies', ['auto', 'chunked'],
                  "Our strategies in W3 ('all' = every strategy run in "
                  'W1/W2).')
flags.DEFINE_list('w1_variants', ['all:auto'],
                  'W1 variants of ours as STRATEGY:UNROLL pairs; STRATEGY '
                  "'all' means every strategy, UNROLL is 'auto' (the "
                  "library default: every step on CPU for this CNN), 'true' "
                  '(every local step) or an integer >= 1 (scanned conv '
                  'steps are ~8x slower on XLA:CPU; such a round costs a '
                  'minute).')
flags.DEFINE_list('w2_unroll', ['auto'], 'W2 / W3 unrolls of ours.')
flags.DEFINE_list('cpu_device_variants', ['2'],
                  'W1 / W2 variants of ours whose cohort is sharded over N '
                  'virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_'
                  'device_count=N, one XLA thread pool per device), to use '
                  'every core where one program does not; 1 adds nothing.')
flags.DEFINE_list('w3_clients', ['10', '100', '1000', '10000'],
                  'W3 clients per round.')
flags.DEFINE_integer('w3_peer_max_clients', 1000,
                     'Largest W3 cohort run by fedjax and torch.')
flags.DEFINE_integer('w3_flower_max_clients', 100,
                     'Largest W3 cohort run by flower (Ray actors are slow).')
flags.DEFINE_integer('w1_chunk', 5, "Clients per chunk of ours' 'chunked' "
                     'strategy in W1 (and of any strategy that reads it).')
flags.DEFINE_integer('w2_chunk', 25, 'Clients per chunk in W2.')
flags.DEFINE_integer('w3_chunk', 500, 'Clients per chunk in W3 (capped at '
                     'the cohort size).')
flags.DEFINE_string('omp_wait_policy', 'PASSIVE',
                    'OMP_WAIT_POLICY of the PyTorch workers (torch, flower); '
                    "'' keeps OpenMP's default (active spinning, which loses "
                    'about 5x on an oversubscribed shared machine).')
flags.DEFINE_string('venv_root', '/work/venvs',
                    'Directory holding the peer virtualenvs fedjax/, torch/ '
                    'and flower/ (benchmarks/setup_venvs.sh).')
DEFAULT_RESULTS_DIR = os.path.join(tempfile.gettempdir(),
                                   'fedjax_ext_benchmarks')
flags.DEFINE_bool('update_report', False,
                  'Write the tracked report: BENCHMARKS.md and '
                  'benchmarks/results/ (unless --out / --results_dir say '
                  'otherwise). Without it a run never touches tracked files.')
flags.DEFINE_string('out', '',
                    'Markdown report to write (default: '
                    '<results_dir>/BENCHMARKS.md, or the tracked '
                    'BENCHMARKS.md with --update_report).')
flags.DEFINE_string('results_dir', '',
                    'Where the report, the PNG and results.json go (default: '
                    f'{DEFAULT_RESULTS_DIR}, or benchmarks/results/ with '
                    '--update_report).')
flags.DEFINE_integer('timeout_s', 600,
                     'Wall-clock limit of one configuration (subprocess).')
flags.DEFINE_float('scale', 1.0,
                   'Multiplies every repetition count and time budget '
                   '(> 0; e.g. 0.5 for a faster, noisier run).')
flags.DEFINE_bool('subprocess', True,
                  'Run each configuration in a fresh subprocess (per-'
                  'configuration peak RSS). --nosubprocess runs ours and '
                  'limit inside the driver (faster start; RSS is then the '
                  "driver's cumulative peak); peers always get their own.")
flags.DEFINE_string('from_results', '',
                    'Only rewrite --out and the PNG from this results.json '
                    '(e.g. of a run cut short); runs nothing.')
flags.DEFINE_bool('quick', False,
                  'Tiny sizes, our systems only (ours, limit): the smoke '
                  'test; refuses --update_report.')

FLAGS = flags.FLAGS



def _parse_unroll(values, flag):
  """'true' (every step), 'auto' (the library default) or integers >= 1."""
  out = []
  for v in values:
    v = v.strip().lower()
    if v in ('true', 'auto'):
      out.append(True if v == 'true' else 'auto')
      continue
    try:
      n = int(v)
    except ValueError:
      n = 0
    if n < 1:
      fail(f"--{flag} unrolls must be 'true', 'auto' or integers >= 1, got "
           f'{v!r}.')
    out.append(n)
  return out


def _check_choices(values, choices, flag):
  for v in values:
    if v not in choices:
      fail(f'--{flag}={v!r} is unknown; valid choices: '
           f'{", ".join(choices)}.')


def _base(model, **kw):
  if model == 'cnn':
    spec = dict(model='cnn', input_shape=[28, 28, 1], num_classes=62)
  else:
    spec = dict(model=model, input_shape=[60], num_classes=10)
    if model == 'mlp':
      spec['hidden_sizes'] = [64]
  spec.update(lr=0.1, server_lr=1.0, seed=0)
  spec.update(kw)
  return spec


def _reps(spec, scale):
  for name in ('repeats', 'budget_s'):
    spec[name] = max(1, type(spec[name])(spec[name] * scale))
  return spec


def plan(workloads, systems, strategies, unrolls, chunks, *, w3_strategies,
         w3_clients, omp_wait_policy='', resolve=None, cpu_devices=(),
         peer_max, flower_max, quick, scale):
  """The list of configurations (specs) to run, in run order.

  Identical configurations (W3 with 100 clients is W2's logistic) run once
  and are reported under every workload that contains them.
  """
  if quick:
    w1 = dict(clients=2, steps=2, batch=4, input_shape=[12, 12, 1])
    w2 = dict(clients=4, steps=3, batch=5)
    reps = dict(warmup=1, repeats=2, budget_s=2., slow_s=5.)
    reps_fast = reps
  else:
    w1 = dict(clients=10, steps=10, batch=20)
    w2 = dict(clients=100, steps=20, batch=10)
    reps = dict(warmup=2, repeats=5, budget_s=30., slow_s=15.)
    reps_fast = dict(warmup=3, repeats=20, budget_s=5., slow_s=15.)
  configs = []

  def add(workload, label, system, spec, **variant):
    spec = dict(spec, system=system, workload=workload, **variant)
    if system in ('torch', 'flower') and omp_wait_policy:
      spec['omp_wait_policy'] = omp_wait_policy
    if system == 'flower':  # Rounds are fixed in advance; keep them few.
      spec.update(warmup=1, repeats=min(spec['repeats'], 3))
    configs.append((workload, label, _reps(spec, scale)))

  def add_all(workload, label, spec, unroll_list, chunk, clients, fast):
    # Order: limit, our 'auto', the peers, then our other variants, so a
    # run cut short still holds the main comparisons of every workload.
    r = reps_fast if fast else reps
    spec = dict(spec, **r)
    if 'limit' in systems:
      add(workload, label, 'limit', spec)
    pairs = []
    if 'ours' in systems:
      if workload == 'W1':
        pairs = [(st, u) for st_list, u in unroll_list for st in st_list]
      else:
        pairs = [(st, u) for st in (w3_strategies if workload == 'W3'
                                    else strategies) for u in unroll_list]
    # 'auto' whose choice (`resolve`) is also run is reported from that run.
    resolved = resolve(spec) if resolve and pairs else None
    aliased = set()
    names = {(st, repr(u)) for st, u in pairs}  # repr: True is not 1 here.
    for strategy, unroll in [p for p in pairs if p[0] == 'auto']:
      if (resolved, repr(unroll)) in names:
        aliased.add((resolved, repr(unroll)))
        add(workload, label, 'ours', spec, execution=resolved, unroll=unroll,
            chunk_size=min(chunk, clients))
        add(workload, label, 'ours', spec, execution='auto', unroll=unroll,
            chunk_size=min(chunk, clients), same_as=resolved)
      else:
        add(workload, label, 'ours', spec, execution=strategy, unroll=unroll,
            chunk_size=min(chunk, clients))
    for peer in PEERS:
      if peer not in systems or quick:
        continue
      if workload == 'W3' and clients > (flower_max if peer == 'flower'
                                         else peer_max):
        continue
      add(workload, label, peer, dict(spec, **reps) if fast else spec)
    for strategy, unroll in [p for p in pairs if p[0] != 'auto' and
                             (p[0], repr(p[1])) not in aliased]:
      add(workload, label, 'ours', spec, execution=strategy, unroll=unroll,
          chunk_size=min(chunk, clients))
    if 'ours' in systems and workload != 'W3':
      for n in cpu_devices:
        if n > 1 and clients % n == 0:
          add(workload, label, 'ours', spec, execution='sharded',
              unroll=unroll_list[0][1] if workload == 'W1' else
              unroll_list[0], chunk_size=min(chunk, clients // n),
              cpu_devices=n)

  for workload in workloads:  # In the order given.
    if workload == 'W1':
      spec = _base('cnn', **w1)
      add_all('W1', 'cnn', spec, unrolls['W1'], chunks['W1'],
              spec['clients'], fast=False)
    elif workload == 'W2':
      for model in ('logistic',) if quick else ('logistic', 'mlp'):
        spec = _base(model, **w2)
        add_all('W2', model, spec, unrolls['W2'], chunks['W2'],
                spec['clients'], fast=True)
    elif workload == 'W3':
      for c in w3_clients:
        spec = _base('logistic', **dict(w2, clients=c))
        add_all('W3', f'logistic C={c}', spec, unrolls['W2'], chunks['W3'],
                c, fast=c <= 1000)
  return configs


def _key(spec):
  """Configurations with equal keys run once (`same_as`: auto's choice)."""
  spec = {k: v for k, v in spec.items() if k != 'workload'}
  if 'same_as' in spec:
    spec['execution'] = spec.pop('same_as')
  return json.dumps(spec, sort_keys=True)


def resolve_auto(spec):
  """What ours' 'auto' resolves to for this spec's model, here."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from fedjax_ext import core  # pylint: disable=g-import-not-at-top
  from fedjax_ext import models  # pylint: disable=g-import-not-at-top
  kwargs = {'hidden_sizes': tuple(spec['hidden_sizes'])} if (
      spec['model'] == 'mlp') else {}
  model = models.create_model(spec['model'], num_classes=spec['num_classes'],
                              **kwargs)
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *spec['input_shape'])))['params'])
  return core.resolve_strategy('auto', [shapes])


def _tree_rss_mb(pid):
  """Summed RSS of `pid` and all its descendants (MiB), from /proc."""
  children = {}
  for entry in os.listdir('/proc'):
    if not entry.isdigit():
      continue
    try:
      with open(f'/proc/{entry}/stat') as f:
        stat = f.read()
    except OSError:
      continue
    fields = stat[stat.rfind(')') + 2:].split()
    children.setdefault(int(fields[1]), []).append(int(entry))
  total, stack = 0, [pid]
  page = os.sysconf('SC_PAGE_SIZE')
  while stack:
    p = stack.pop()
    try:
      with open(f'/proc/{p}/statm') as f:
        total += int(f.read().split()[1]) * page
    except OSError:
      pass
    stack.extend(children.get(p, ()))
  return total / 2**20


def run_config(python, spec, timeout_s):
  """Runs one configuration in a fresh subprocess; returns its result."""
  worker = os.path.join(HERE, _WORKER[spec['system']])
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
             TF_CPP_MIN_LOG_LEVEL='2')
  if spec.get('omp_wait_policy'):  # Read by libgomp when torch loads.
    env['OMP_WAIT_POLICY'] = spec['omp_wait_policy']
  if spec.get('cpu_devices', 1) > 1:
    env['XLA_FLAGS'] = ' '.join([
        env.get('XLA_FLAGS', ''),
        f"--xla_force_host_platform_device_count={spec['cpu_devices']}"
    ]).strip()
  load_before = os.getloadavg()[0]
  t0 = time.perf_counter()
  proc = subprocess.Popen([python, worker, json.dumps(spec)], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  peak = [0.]
  done = threading.Event()

  def sample():
    while not done.wait(0.5):
      peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  try:
    out, err = proc.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, 9)
    out, err = proc.communicate()
    result = {'ok': False, 'error': f'timed out after {timeout_s} s'}
  else:
    result = None
    for line in out.splitlines():
      if line.startswith('BENCH_RESULT '):
        result = json.loads(line[len('BENCH_RESULT '):])
    if result is None:
      tail = (err.strip().splitlines() or ['no output'])[-1]
      result = {'ok': False,
                'error': f'exit status {proc.returncode}: {tail[:300]}'}
  finally:
    done.set()
    sampler.join()
  if proc.poll() is None:  # Stray process group members (Ray) after a kill.
    try:
      os.killpg(proc.pid, 9)
    except ProcessLookupError:
      pass
  result.update(spec=spec, wall_s=time.perf_counter() - t0,
                tree_peak_rss_mb=peak[0] or None, load_before=load_before,
                load_after=os.getloadavg()[0])
  if not result.get('ok'):
    result['stderr_tail'] = err[-2000:] if err else ''
  return result


def run_inprocess(spec):
  """Runs an ours/limit configuration inside this process (no fresh RSS)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import resource  # pylint: disable=g-import-not-at-top
  if HERE not in sys.path:
    sys.path.insert(0, HERE)
  path = os.path.join(HERE, _WORKER[spec['system']])
  module_spec = importlib.util.spec_from_file_location('_bench_worker', path)
  worker = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(worker)
  t0 = time.perf_counter()
  load_before = os.getloadavg()[0]
  try:
    result = dict(worker.main(spec), ok=True)
  except Exception as e:  # pylint: disable=broad-except
    result = {'ok': False, 'error': f'{type(e).__name__}: {e}'[:300]}
  result.update(
      spec=spec, wall_s=time.perf_counter() - t0, tree_peak_rss_mb=None,
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.,
      rss_cumulative=True, load_before=load_before,
      load_after=os.getloadavg()[0])
  return result


def _pythons(venv_root, systems):
  pythons = {'ours': sys.executable, 'limit': sys.executable}
  for peer in PEERS:
    path = os.path.join(venv_root, peer, 'bin', 'python')
    if peer in systems and not os.path.exists(path):
      fail(f'{path} does not exist; run bash benchmarks/setup_venvs.sh '
           f'{venv_root} first, or leave {peer} out of --systems.')
    pythons[peer] = path
  return pythons


def _machine():
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  mem = ''
  try:
    with open('/proc/meminfo') as f:
      kib = int(f.readline().split()[1])
      mem = f'{kib / 2**20:.0f} GiB'
  except (OSError, ValueError, IndexError):
    pass
  return {'cpu': cpu, 'cores': os.cpu_count(), 'memory': mem,
          'python': platform.python_version(), 'platform': platform.platform()}


def jax_backend() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend()


def resolve_output_paths() -> None:
  """Fills --results_dir / --out: temporary unless --update_report."""
  if FLAGS.quick and FLAGS.update_report:
    fail('--quick runs tiny sizes; it cannot --update_report the tracked '
         'BENCHMARKS.md.')
  if not FLAGS.results_dir:
    FLAGS.results_dir = (os.path.join(HERE, 'results') if FLAGS.update_report
                         else DEFAULT_RESULTS_DIR)
  if not FLAGS.out:
    FLAGS.out = (os.path.join(ROOT, 'BENCHMARKS.md') if FLAGS.update_report
                 else os.path.join(FLAGS.results_dir, 'BENCHMARKS.md'))


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  resolve_output_paths()
  if FLAGS.from_results:
    try:
      with open(FLAGS.from_results) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      fail(f'--from_results={FLAGS.from_results}: {e}')
    write_report(saved['results'], saved['meta'])
    return
  from fedjax_ext import core  # pylint: disable=g-import-not-at-top
  workloads = list(FLAGS.workloads)
  _check_choices(workloads, WORKLOADS, 'workloads')
  systems = list(FLAGS.systems)
  _check_choices(systems, SYSTEMS, 'systems')
  if FLAGS.quick:
    systems = [s for s in systems if s not in PEERS]
  strategies = list(FLAGS.strategies) or list(core.STRATEGIES)
  _check_choices(strategies, core.STRATEGIES, 'strategies')
  w3_strategies = list(FLAGS.w3_strategies)
  if w3_strategies == ['all']:
    w3_strategies = strategies
  _check_choices(w3_strategies, core.STRATEGIES, 'w3_strategies')
  try:
    w3_clients = [int(c) for c in FLAGS.w3_clients]
  except ValueError:
    w3_clients = [0]
  if FLAGS.quick and not FLAGS['w3_clients'].present:
    w3_clients = [2, 8]
  if not w3_clients or min(w3_clients) < 1:
    fail('--w3_clients must be integers >= 1, got '
         f'{",".join(FLAGS.w3_clients)}.')
  if not FLAGS.scale > 0:
    fail(f'--scale must be > 0, got {FLAGS.scale}.')
  if FLAGS.timeout_s < 1:
    fail(f'--timeout_s must be >= 1, got {FLAGS.timeout_s}.')
  w1_variants = []
  for item in FLAGS.w1_variants:
    strategy, _, unroll = item.partition(':')
    if strategy != 'all':
      _check_choices([strategy], core.STRATEGIES, 'w1_variants')
    w1_variants.append((strategies if strategy == 'all' else [strategy],
                        _parse_unroll([unroll], 'w1_variants')[0]))
  unrolls = {'W1': w1_variants,
             'W2': _parse_unroll(FLAGS.w2_unroll, 'w2_unroll')}
  chunks = {w: getattr(FLAGS, f'{w.lower()}_chunk') for w in WORKLOADS}
  for w, k in chunks.items():
    if k < 1:
      fail(f'--{w.lower()}_chunk must be >= 1, got {k}.')
  if FLAGS.quick:
    chunks = {'W1': 1, 'W2': 2, 'W3': 4}
  try:
    cpu_devices = [int(n) for n in FLAGS.cpu_device_variants]
  except ValueError:
    cpu_devices = [0]
  if any(n < 1 for n in cpu_devices):
    fail('--cpu_device_variants must be integers >= 1, got '
         f'{",".join(FLAGS.cpu_device_variants)}.')
  pythons = _pythons(FLAGS.venv_root, systems)
  configs = plan(workloads, systems, strategies, unrolls, chunks,
                 w3_strategies=w3_strategies,
                 omp_wait_policy=FLAGS.omp_wait_policy, resolve=resolve_auto,
                 cpu_devices=cpu_devices,
                 w3_clients=w3_clients, peer_max=FLAGS.w3_peer_max_clients,
                 flower_max=FLAGS.w3_flower_max_clients, quick=FLAGS.quick,
                 scale=FLAGS.scale)
  command = ' '.join(['python -m benchmarks.run'] +
                     [shlex.quote(a) for a in sys.argv[1:]])
  started = datetime.datetime.now(datetime.timezone.utc)
  print(f'{len(configs)} configurations; started {started:%Y-%m-%d %H:%M} '
        'UTC', flush=True)
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  meta = {
      'command': command,
      'started': started.isoformat(timespec='seconds'),
      'machine': _machine(),
      'strategies': strategies,
      'w3_strategies': w3_strategies,
      'quick': FLAGS.quick,
      'subprocess': FLAGS.subprocess,
      'planned': len(configs),
      'backend': jax_backend(),
  }
  t_start = time.perf_counter()
  cache, rows = {}, []
  for i, (workload, label, spec) in enumerate(configs):
    key = _key(spec)
    if key not in cache:
      if (not FLAGS.subprocess and spec['system'] in ('ours', 'limit') and
          spec.get('cpu_devices', 1) == 1):  # Device counts need a process.
        cache[key] = run_inprocess(spec)
      else:
        cache[key] = run_config(pythons[spec['system']], spec,
                                FLAGS.timeout_s)
      reused = False
    else:
      reused = True
    result = dict(cache[key], workload=workload, label=label, reused=reused,
                  spec=spec)
    rows.append(result)
    print(f'[{i + 1}/{len(configs)} {time.perf_counter() - t_start:6.0f}s] '
          f'{_report.describe(result)}', flush=True)
    # Results so far, so a run cut short can still be reported
    # (--from_results).
    meta.update(finished=None, total_s=time.perf_counter() - t_start)
    _write_json(rows, meta)
  meta.update(
      finished=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      total_s=time.perf_counter() - t_start)
  _write_json(rows, meta)
  write_report(rows, meta)


def _write_json(rows, meta):
  path = os.path.join(FLAGS.results_dir, 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump({'meta': meta, 'results': rows}, f, indent=1)
  os.replace(path + '.tmp', path)


def write_report(rows, meta):
  """Writes --out and the PNG from collected rows."""
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  png = os.path.join(FLAGS.results_dir, 'benchmarks.png')
  _report.plot(rows, png)
  with open(FLAGS.out, 'w') as f:
    f.write(_report.markdown(rows, meta, png_path=os.path.relpath(
        png, os.path.dirname(os.path.abspath(FLAGS.out)))))
  print(f'Wrote {FLAGS.out}, {png} and '
        f'{os.path.join(FLAGS.results_dir, "results.json")} after '
        f'{meta["total_s"]:.0f} s of benchmarks.')

if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
