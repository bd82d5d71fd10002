"""Tasks: importing this package registers them with fairseq."""

from searnn_fairseq.tasks import dense_seq2seq, factored_translation, spelling_correction  # noqa: F401
