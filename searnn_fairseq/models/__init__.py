"""Models: importing this package registers them with fairseq."""

from searnn_fairseq.models import searnn_gru  # noqa: F401
