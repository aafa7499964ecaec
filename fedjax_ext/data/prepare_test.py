"""The prepare command: plans, one-line errors, checksums; no network."""

import dataclasses
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from fedjax_ext.data import _datasets
from fedjax_ext.data import _federated
from fedjax_ext.data import _federated_test
from fedjax_ext.data import prepare

NO_NETWORK = mock.patch('socket.socket.connect',
                        side_effect=AssertionError('network access'))


def tempdir(test):
  path = tempfile.mkdtemp(prefix='fedjax_ext_prepare_')
  test.addCleanup(shutil.rmtree, path)
  return path


class PlanTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('mnist', 'mnist', 'mnist'),
      ('emnist', 'emnist', 'emnist/byclass'),
      ('emnist_config', 'emnist/balanced', 'emnist/balanced'),
      ('fashion_mnist', 'fashion_mnist', 'fashion_mnist'),
      ('cifar10', 'cifar10', 'cifar10'),
      ('cifar100', 'cifar100', 'cifar100'),
  )
  def test_catalogue(self, name, tfds_name):
    plan = prepare.make_plan(name, '/data')
    self.assertEqual((plan.kind, plan.tfds_name, plan.data_dir, plan.needs),
                     ('catalogue', tfds_name, '/data', ('tensorflow',)))

  @parameterized.named_parameters(
      ('emnist_digits', 'federated_emnist', 'fed_emnist_digitsonly'),
      ('emnist_full', 'federated_emnist/full', 'fed_emnist'),
      ('shakespeare', 'shakespeare', 'shakespeare'),
      ('stackoverflow', 'stackoverflow/next_word_1k', 'stackoverflow'),
  )
  def test_federated(self, name, stem):
    plan = prepare.make_plan(name, '/data')
    self.assertEqual((plan.kind, plan.needs), ('federated', ('h5py',)))
    self.assertEqual(plan.archive,
                     f'/data/downloads/fedjax_ext/{stem}.tar.bz2')
    self.assertEqual(plan.extract_dir, f'/data/downloads/fedjax_ext/{stem}')
    self.assertEqual(plan.source.url, _federated.TFF_URL + f'{stem}.tar.bz2')

  def test_local_and_errors(self):
    self.assertEqual(prepare.make_plan('digits', '/d').kind, 'local')
    with self.assertRaisesRegex(prepare.PrepareError,
                                "unknown dataset 'imagenet'; choose one of "
                                'digits, .*, stackoverflow'):
      prepare.make_plan('imagenet', '/d')
    with self.assertRaisesRegex(prepare.PrepareError,
                                'next_word, next_word_1k'):
      prepare.make_plan('stackoverflow/tags', '/d')

  def test_error_messages_name_the_command(self):
    self.assertEqual(
        _datasets.prepare_command('shakespeare', '/d'),
        'python -m fedjax_ext.data.prepare --dataset=shakespeare '
        '--data_dir=/d')


def shakespeare_archive(root):
  """A shakespeare.tar.bz2 in TFF's layout; returns (path, sha256)."""
  files = os.path.join(root, 'files')
  os.makedirs(files)
  _federated_test.write_tff_h5(
      os.path.join(files, 'shakespeare_train.h5'),
      {'A_ROLE': {'snippets': [b'To be, or not']},
       'B_ROLE': {'snippets': [b'x' * 90]}})
  _federated_test.write_tff_h5(
      os.path.join(files, 'shakespeare_test.h5'),
      {'A_ROLE': {'snippets': [b'to be']}})
  path = os.path.join(root, 'shakespeare.tar.bz2')
  with tarfile.open(path, 'w:bz2') as tar:
    for name in ('shakespeare_train.h5', 'shakespeare_test.h5'):
      tar.add(os.path.join(files, name), arcname=f'datasets/{name}')
  return path, prepare.sha256_of(path)


class RunTest(absltest.TestCase):

  def run_prepare(self, name, data_dir, **kwargs):
    err, out = io.StringIO(), []
    with NO_NETWORK:
      status = prepare.run(name, data_dir, log=out.append, err=err, **kwargs)
    return status, err.getvalue(), out

  def test_missing_tensorflow_is_one_line_naming_the_extra(self):
    data_dir = tempdir(self)
    real = importlib.util.find_spec
    absent = lambda name, *a: None if name == 'tensorflow' else real(name, *a)
    with mock.patch.object(importlib.util, 'find_spec', absent):
      status, err, _ = self.run_prepare('cifar10', data_dir)
    self.assertEqual(status, 2)
    self.assertEqual(err.count('\n'), 1)
    self.assertIn('needs tensorflow', err)
    self.assertIn("pip install -e '.[prepare]'", err)
    self.assertEqual(os.listdir(data_dir), [])

  def test_unknown_dataset(self):
    status, err, _ = self.run_prepare('imagenet', tempdir(self))
    self.assertEqual(status, 2)
    self.assertRegex(err, r"^prepare: error: unknown dataset 'imagenet'.*\n$")

  def test_local_dataset_needs_no_download(self):
    data_dir = tempdir(self)
    status, _, out = self.run_prepare('digits', data_dir)
    self.assertEqual(status, 0)
    self.assertIn('Prepared digits in', out[-1])
    self.assertTrue(os.path.isdir(os.path.join(data_dir, 'digits')))

  def federated(self, sha256, **kwargs):
    root = tempdir(self)
    archive, digest = shakespeare_archive(root)
    data_dir = os.path.join(root, 'data')
    source = dataclasses.replace(
        _federated.SOURCES['shakespeare'],
        sha256=digest if sha256 == 'right' else sha256)
    fetched = []

    def fake_fetch(url, path):
      fetched.append(url)
      shutil.copy(archive, path)

    with mock.patch.dict(_federated.SOURCES, {'shakespeare': source}), \
        mock.patch.object(prepare, 'fetch', fake_fetch):
      result = self.run_prepare('shakespeare', data_dir, **kwargs)
    return result, data_dir, fetched

  def test_federated_download_verify_extract_build(self):
    (status, err, out), data_dir, fetched = self.federated('right')
    self.assertEqual((status, err), (0, ''))
    self.assertEqual(fetched, [_federated.SOURCES['shakespeare'].url])
    self.assertIn('Prepared shakespeare in', out[-1])
    ds = _datasets.load_dataset('shakespeare', data_dir=data_dir)
    self.assertEqual(ds.train['x'].shape, (3, 80))  # 14 + 91 transitions.
    np.testing.assert_array_equal(ds.train['client_id'], [0, 1, 1])
    self.assertEqual(ds.test['x'].shape, (1, 80))

  def test_checksum_mismatch_refuses_to_build(self):
    (status, err, _), data_dir, _ = self.federated('0' * 64)
    self.assertEqual(status, 2)
    self.assertEqual(err.count('\n'), 1)
    self.assertIn('expected ' + '0' * 64, err)
    self.assertFalse(os.path.exists(os.path.join(data_dir, 'shakespeare')))

  def test_unknown_checksum_needs_allow_unverified(self):
    (status, err, _), _, fetched = self.federated(None)
    self.assertEqual(status, 2)
    self.assertIn('--allow_unverified', err)
    self.assertEqual(fetched, [])  # Refused before downloading.
    (status, err, out), _, _ = self.federated(None, allow_unverified=True)
    self.assertEqual((status, err), (0, ''))
    self.assertTrue(any('(unverified)' in line for line in out))

  def test_missing_h5py_names_the_extra(self):
    real = importlib.util.find_spec
    absent = lambda name, *a: None if name == 'h5py' else real(name, *a)
    with mock.patch.object(importlib.util, 'find_spec', absent):
      status, err, _ = self.run_prepare('federated_emnist/full',
                                        tempdir(self))
    self.assertEqual(status, 2)
    self.assertIn("needs h5py (it reads the TFF HDF5 files), which is not "
                  "installed; install the [prepare] extra: pip install -e "
                  "'.[prepare]'", err)


class CommandLineTest(absltest.TestCase):

  def test_exit_status_2_and_one_line(self):
    data_dir = tempdir(self)
    name = 'mnist' if importlib.util.find_spec('tensorflow') is None else (
        'imagenet')
    result = subprocess.run(
        [sys.executable, '-m', 'fedjax_ext.data.prepare', f'--dataset={name}',
         f'--data_dir={data_dir}'], capture_output=True, text=True,
        check=False, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    self.assertEqual(result.returncode, 2, result.stderr)
    lines = [l for l in result.stderr.splitlines() if l.startswith('prepare')]
    self.assertLen(lines, 1, result.stderr)
    if name == 'mnist':
      self.assertIn("pip install -e '.[prepare]'", lines[0])


if __name__ == '__main__':
  absltest.main()
