r"""Robust aggregation of 100 clients x the 1.2M-parameter EMNIST CNN vs W1.

Times each robust rule of `training.AGGREGATORS` (built by
`training.create_aggregator`, as the experiments build them) aggregating
``--clients`` stacked CNN updates, and, in the same process, a W1 round
(10 clients x 200 examples, batch 20, one local epoch of that CNN,
`algorithms.fed_avg` with every local step unrolled), so each rule's cost
reads as a fraction of a round. The target of issue 6: under 10% of a W1
round. ``--sort`` also times median and trimmed mean with ``jnp.sort``
(the baseline the sorting network replaced; ~12-15 s each on CPU).
Every run also times the Gram matrix of the stacked updates alone
(`aggregators._distance.gram_matrix`, ``gram_matrix_s``): the one
:math:`2 C^2 d`-flop matmul Krum, multi-Krum, NNM and Bulyan share, their
floor on CPU. ``--exact`` also times those rules with
``distances='exact'`` (direct differences, no cancellation; slow).

  python -m benchmarks.aggregation                       # /tmp/... json
  python -m benchmarks.aggregation --sort --update_report
  python -m benchmarks.aggregation --aggregators=krum,bulyan --exact
  python -m benchmarks.aggregation --quick               # smoke test

Writes ``aggregation.json`` to ``--results_dir`` (default a directory under
/tmp), or to ``benchmarks/results/`` with ``--update_report``. Each timing
is the median of ``--repeats`` calls after one compile-and-warm-up call;
wall and process CPU time are both reported (XLA:CPU runs most rules on
one core but a W1 round's convolutions on all of them). Bad flags exit
with status 2 and a one-line ``error:`` message.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._cli import fail
from experiments._cli import parse_flags
from fedjax_ext import aggregators
from fedjax_ext import algorithms
from fedjax_ext import clients
from fedjax_ext import core
from fedjax_ext import models
from fedjax_ext import training
from fedjax_ext.aggregators import _distance

HERE = os.path.dirname(os.path.abspath(__file__))
REPORT_DIR = os.path.join(HERE, 'results')
RESULTS_FILE = 'aggregation.json'
SORT_BASELINES = ('median@sort', 'trimmed_mean@sort')
EXACT_BASELINES = ('krum@exact', 'multi_krum@exact',
                   'nnm_trimmed_mean@exact', 'bulyan@exact')
# Rules by default: every named rule but the guarded mean (= mean here).
DEFAULT_AGGREGATORS = [n for n in training.AGGREGATORS if n != 'mean_guarded']
# --quick: a smoke test in seconds (numbers meaningless).
QUICK = dict(clients=8, num_byzantine=2, w1_clients=2, w1_examples=20,
             aggregators=['mean', 'median', 'krum', 'nnm_trimmed_mean'],
             repeats=1)

flags.DEFINE_string('results_dir',
                    os.path.join(tempfile.gettempdir(),
                                 'fedjax_ext_benchmarks'),
                    'Where aggregation.json goes (ignored with '
                    '--update_report).')
flags.DEFINE_bool('update_report', False, 'Write to benchmarks/results/ '
                  '(the checked-in numbers) instead of --results_dir.')
flags.DEFINE_list('aggregators', DEFAULT_AGGREGATORS,
                  f'Rules to time, of: {", ".join(training.AGGREGATORS)}.')
flags.DEFINE_bool('sort', False, 'Also time median and trimmed mean with '
                  "method='sort' (slow baseline).")
flags.DEFINE_bool('exact', False, "Also time the Gram-based rules of "
                  "--aggregators with distances='exact' (slow baseline).")
flags.DEFINE_integer('clients', 100, 'Stacked client updates.', 2)
flags.DEFINE_integer('num_byzantine', 20, 'b of the robust rules.', 0)
flags.DEFINE_integer('w1_clients', 10, 'Clients of the W1 round.', 1)
flags.DEFINE_integer('w1_examples', 200, 'Examples per W1 client (batch '
                     '20).', 20)
flags.DEFINE_integer('repeats', 3, 'Timed calls per measurement.', 1)
flags.DEFINE_float('cc_radius', 1.0, 'Centered clipping radius.')
flags.DEFINE_bool('quick', False, f'Tiny sizes: {QUICK}; flags given '
                  'explicitly win.')
flags.register_validator(
    'aggregators', lambda v: bool(v) and set(v) <= set(training.AGGREGATORS),
    f'--aggregators must name some of: {", ".join(training.AGGREGATORS)}.')
flags.register_validator(
    'w1_examples', lambda v: v % 20 == 0,
    '--w1_examples must be a multiple of the batch size 20.')

FLAGS = flags.FLAGS


def log(message: str) -> None:
  print(message, flush=True)


def time_calls(fn, *args, repeats: int = 3) -> tuple[float, float, float]:
  """(compile + first call, median wall, median process CPU) seconds."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  first = time.perf_counter() - t0
  walls, cpus = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  return first, float(np.median(walls)), float(np.median(cpus))


def time_w1_round(model, params, *, num_clients: int, examples: int,
                  repeats: int) -> tuple[float, float]:
  """(wall, CPU) seconds of one FedAvg round of the CNN on random data."""
  rng = np.random.default_rng(0)
  steps = examples // 20
  algorithm = algorithms.fed_avg(
      clients.classification_loss(model), optax.sgd(0.05), optax.sgd(1.),
      execution=core.Execution(unroll=True))
  shape = (num_clients, steps, 20)
  cohort = core.Cohort(
      jnp.arange(num_clients, dtype=jnp.int32),
      {'x': jnp.asarray(rng.uniform(size=shape + (28, 28, 1)), jnp.float32),
       'y': jnp.asarray(rng.integers(0, 62, shape), jnp.int32),
       'mask': jnp.ones(shape, jnp.float32)},
      jnp.full((num_clients,), float(examples), jnp.float32))
  round_fn = jax.jit(lambda s, c: algorithm.apply(s, (), c,
                                                  jax.random.key(0))[0])
  _, wall, cpu = time_calls(round_fn, algorithm.init(params), cohort,
                            repeats=repeats)
  return wall, cpu


def make_rule(name: str, b: int) -> core.Aggregator:
  """`training.create_aggregator`, or a ``<rule>@sort|@exact`` baseline."""
  base, _, method = name.partition('@')
  if not method:
    return training.create_aggregator(name, b, cc_radius=FLAGS.cc_radius)
  if method == 'exact':
    exact = 'exact'
    return {'krum': lambda: aggregators.multi_krum(b, 1, distances=exact),
            'multi_krum': lambda: aggregators.multi_krum(b,
                                                         distances=exact),
            'nnm_trimmed_mean': lambda: aggregators.process(
                aggregators.nnm(b, distances=exact),
                aggregators.trimmed_mean(b)),
            'bulyan': lambda: aggregators.bulyan(b, distances=exact),
            }[base]()
  return {'median': lambda: aggregators.coordinate_median(method=method),
          'trimmed_mean': lambda: aggregators.trimmed_mean(b, method=method),
          }[base]()


def run_benchmark(settings: dict) -> dict:
  """Times W1 and every rule; returns what goes to aggregation.json."""
  model = models.create_model('cnn', num_classes=62)
  params = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1),
                                                  np.float32))['params']
  num_params = sum(p.size for p in jax.tree.leaves(params))
  log(f'W1 round ({settings["w1_clients"]} clients x '
      f'{settings["w1_examples"]} examples, batch 20, CNN with {num_params} '
      'params)...')
  w1, w1_cpu = time_w1_round(model, params,
                             num_clients=settings['w1_clients'],
                             examples=settings['w1_examples'],
                             repeats=settings['repeats'])
  log(f'  W1 round: {w1:.3f} s wall, {w1_cpu:.3f} s CPU')
  rng = np.random.default_rng(0)
  c = settings['clients']
  stacked = jax.tree.map(lambda p: jnp.asarray(
      rng.normal(size=(c,) + p.shape) * 0.01, jnp.float32), params)
  weights = jnp.ones(c)
  _, gram, gram_cpu = time_calls(jax.jit(_distance.gram_matrix), stacked,
                                 repeats=settings['repeats'])
  log(f'  {"gram_matrix":>24}: {gram:.3f} s = {100 * gram / w1:.1f}% of a '
      f'W1 round (CPU {gram_cpu:.3f} s; shared by Krum, NNM, Bulyan)')
  out = dict(settings, num_params=int(num_params), w1_round_s=w1,
             w1_round_cpu_s=w1_cpu, gram_matrix_s=gram,
             gram_matrix_cpu_s=gram_cpu, aggregators={},
             load_average=os.getloadavg(), backend=jax.default_backend())
  names = list(settings['aggregators'])
  names += list(SORT_BASELINES) if settings['sort'] else []
  names += [n for n in EXACT_BASELINES if settings['exact']
            and n.partition('@')[0] in settings['aggregators']]
  for name in names:
    rule = make_rule(name, settings['num_byzantine'])
    fn = jax.jit(lambda u, s, w, rule=rule: rule.update(u, s, weights=w)[0])
    try:
      first, t, cpu = time_calls(
          fn, stacked, rule.init(params), weights,
          repeats=1 if '@' in name else settings['repeats'])
    except Exception as e:  # pylint: disable=broad-except
      log(f'  {name}: failed ({type(e).__name__}: {e})')
      continue
    out['aggregators'][name] = {
        'seconds': t, 'cpu_seconds': cpu, 'compile_and_first_s': first,
        'fraction_of_w1': t / w1, 'cpu_fraction_of_w1': cpu / w1_cpu}
    log(f'  {name:>24}: {t:.3f} s = {100 * t / w1:.1f}% of a W1 round '
        f'(CPU {cpu:.3f} s = {100 * cpu / w1_cpu:.1f}%; compile + first '
        f'call {first:.1f} s)')
  out['load_average_after'] = os.getloadavg()
  return out


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  names = ('aggregators', 'sort', 'exact', 'clients', 'num_byzantine',
           'w1_clients', 'w1_examples', 'repeats')
  settings = {n: FLAGS[n].value for n in names}
  if FLAGS.quick:
    settings.update({k: v for k, v in QUICK.items() if not FLAGS[k].present})
  if settings['num_byzantine'] >= settings['clients'] / 2:
    fail(f'--num_byzantine must be below half of --clients '
         f'({settings["clients"]}), got {settings["num_byzantine"]}.')
  results_dir = REPORT_DIR if FLAGS.update_report else FLAGS.results_dir
  try:
    os.makedirs(results_dir, exist_ok=True)
  except OSError as e:
    fail(f'--results_dir={results_dir!r} cannot be created: {e}')
  out = run_benchmark(settings)
  path = os.path.join(results_dir, RESULTS_FILE)
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)
  log(f'wrote {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
