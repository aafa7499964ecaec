"""plot_metrics writes a PNG; curves use only the lines that have their key."""

import json
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

from fedjax_ext.training import _plots

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

FULL = [
    {'round': 1, 'test_accuracy': 0.5, 'test_loss': 1.5, 'train_loss': 1.6,
     'client_accuracy_mean': 0.45, 'client_accuracy_p10': 0.2},
    {'round': 2, 'test_accuracy': 0.6, 'test_loss': 1.2, 'train_loss': 1.3,
     'client_accuracy_mean': 0.55, 'client_accuracy_p10': 0.3},
    {'round': 3, 'test_accuracy': 0.7, 'test_loss': 0.9, 'train_loss': 1.0,
     'client_accuracy_mean': 0.65, 'client_accuracy_p10': 0.4},
]

# Evaluation every other round, no per-client metrics, a null value.
PARTIAL = [
    {'round': 1, 'train_loss': 2.0},
    {'round': 2, 'train_loss': 1.8, 'test_accuracy': 0.3, 'test_loss': 2.1},
    {'round': 3, 'train_loss': None},
    {'round': 4, 'train_loss': 1.5, 'test_accuracy': 0.4, 'test_loss': 1.9},
]


def write_jsonl(path, records, tail=''):
  with open(path, 'w') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in records) + tail)
  return path


class PlotMetricsTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = self.enterContext(tempfile.TemporaryDirectory())

  @parameterized.named_parameters(('full', FULL), ('partial', PARTIAL))
  def test_writes_a_png(self, records):
    metrics = write_jsonl(os.path.join(self.dir, 'metrics.jsonl'), records)
    png = os.path.join(self.dir, 'plots', 'metrics.png')
    self.assertEqual(_plots.plot_metrics(metrics, png, title='FedAvg'), png)
    with open(png, 'rb') as f:
      data = f.read()
    self.assertGreater(len(data), 1000)
    self.assertEqual(data[:8], PNG_SIGNATURE)

  def test_full_curves(self):
    metrics = write_jsonl(os.path.join(self.dir, 'm.jsonl'), FULL)
    curves = _plots.read_curves(metrics, ('test_accuracy',
                                          'client_accuracy_p10', 'missing'))
    self.assertEqual(curves, {
        'test_accuracy': ([1, 2, 3], [0.5, 0.6, 0.7]),
        'client_accuracy_p10': ([1, 2, 3], [0.2, 0.3, 0.4]),
    })

  def test_partial_curves_skip_lines_without_the_key(self):
    # A blank line and a truncated last line (a run still writing) are fine.
    metrics = write_jsonl(os.path.join(self.dir, 'm.jsonl'), PARTIAL,
                          tail='\n{"round": 5, "train_lo')
    curves = _plots.read_curves(
        metrics, ('test_accuracy', 'train_loss', 'client_accuracy_mean'))
    self.assertEqual(curves, {
        'test_accuracy': ([2, 4], [0.3, 0.4]),
        'train_loss': ([1, 2, 4], [2.0, 1.8, 1.5]),
    })

  def test_corrupt_line_in_the_middle_raises(self):
    path = os.path.join(self.dir, 'm.jsonl')
    with open(path, 'w') as f:
      f.write('{"round": 1, "test_loss": 1.0}\nnot json\n'
              '{"round": 2, "test_loss": 0.5}\n')
    with self.assertRaises(ValueError):
      _plots.read_curves(path, ('test_loss',))


class PlotRunsTest(absltest.TestCase):

  def test_mean_curve_averages_runs_at_their_common_rounds(self):
    seed0 = [{'round': 1, 'acc': 0.5}, {'round': 2, 'acc': 0.7},
             {'round': 3, 'acc': 0.8}]
    seed1 = [{'round': 1, 'acc': 0.3}, {'round': 2, 'acc': None},
             {'round': 3, 'acc': 0.6, 'loss': 1.}]
    rounds, values = _plots.mean_curve([seed0, seed1], 'acc')
    self.assertEqual(rounds, [1, 3])
    self.assertSequenceAlmostEqual(values, [0.4, 0.7])
    self.assertEqual(_plots.mean_curve([seed0, seed1], 'loss'), ([], []))
    self.assertEqual(_plots.mean_curve([], 'acc'), ([], []))

  def test_writes_a_png_with_several_panels_and_an_empty_one(self):
    with tempfile.TemporaryDirectory() as tmp:
      png = os.path.join(tmp, 'cmp', 'accuracy.png')
      panels = {
          'fedavg': {'FL plain': [FULL, FULL], 'FL ISR': [FULL]},
          'scaffold': {'FL plain': [PARTIAL]},
          'fedadam': {},
      }
      self.assertEqual(_plots.plot_runs(panels, png, key='test_accuracy',
                                        title='digits'), png)
      with open(png, 'rb') as f:
        data = f.read()
      self.assertGreater(len(data), 1000)
      self.assertEqual(data[:8], PNG_SIGNATURE)


class PlotHeatmapsTest(absltest.TestCase):

  def test_writes_a_png_with_nan_cells_and_panels_of_other_sizes(self):
    with tempfile.TemporaryDirectory() as tmp:
      png = os.path.join(tmp, 'grid', 'heatmap.png')
      panels = {
          'digits, 10%': (['mean', 'median'], ['none', 'nan'],
                          [[92.8, float('nan')], [91.9, 91.4]]),
          'digits, 20%': (['mean'], ['none', 'nan', 'alie'],
                          [[92.0, float('nan'), 0.5]]),
      }
      self.assertEqual(_plots.plot_heatmaps(panels, png, vmin=0, vmax=100,
                                            title='accuracy %'), png)
      with open(png, 'rb') as f:
        data = f.read()
      self.assertGreater(len(data), 1000)
      self.assertEqual(data[:8], PNG_SIGNATURE)


if __name__ == '__main__':
  absltest.main()
