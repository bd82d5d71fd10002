"""searnn-fairseq: SEARNN training (Leblond et al., ICLR 2018) as a fairseq plugin.

Load it with ``--user-dir searnn_fairseq`` (or the path printed by
``searnn-user-dir``). Importing it registers the criteria (searnn_ll,
searnn_llcas, searnn_shl, searnn_kl), the searnn_gru model, tasks and scorers,
and fixes fairseq 0.12 (see ``compat``): makes its checkpoints loadable under
torch >= 2.6, stops it from dropping the last batch of a dataset, keeps
``--patience`` counting across a resumed run, and starts a warm start's
training clock at zero. Each fix applies only where fairseq's function has the
signature it was written for (one warning names a fix left out), one log line
names those applied, and ``SEARNN_FAIRSEQ_NO_PATCHES=1`` leaves fairseq as it is.
"""

from searnn_fairseq import compat

compat.apply()

from searnn_fairseq import costs, criterions, models, scoring, tasks  # noqa: E402,F401
