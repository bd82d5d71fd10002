"""searnn-fairseq: SEARNN training (Leblond et al., ICLR 2018) as a fairseq plugin.

Load it with ``--user-dir searnn_fairseq`` (or the path printed by
``searnn-user-dir``). Importing it registers the criteria (searnn_ll,
searnn_llcas, searnn_shl, searnn_kl), the searnn_gru model, tasks and scorers,
makes fairseq checkpoints loadable under torch >= 2.6, stops fairseq 0.12
from dropping the last batch of a dataset, and keeps ``--patience`` counting
across a resumed run (see ``compat``).
"""

from searnn_fairseq import compat

compat.apply()

from searnn_fairseq import costs, criterions, models, scoring, tasks  # noqa: E402,F401
