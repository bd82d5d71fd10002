"""searnn-fairseq: SEARNN training (Leblond et al., ICLR 2018) as a fairseq plugin.

Load it with ``--user-dir searnn_fairseq`` (or the path printed by
``searnn-user-dir``). Importing it registers the criteria (searnn_ll,
searnn_llcas, searnn_shl, searnn_kl), the searnn_gru model, tasks and scorers,
and makes fairseq checkpoints loadable under torch >= 2.6.
"""

from searnn_fairseq.checkpoint_compat import register_safe_globals

register_safe_globals()

from searnn_fairseq import costs, criterions, models  # noqa: E402,F401
