from searnn_fairseq.criterions import searnn  # noqa: F401  (registers the criteria)
