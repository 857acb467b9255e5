"""The folder fairseq imports for ``--user-dir "$(trime-user-dir)"``: registers trime's tasks
and criteria with fairseq, and nothing else imports it.

fairseq imports a user dir as a top-level module named after its folder, with the folder's
parent put first on ``sys.path`` (``fairseq.utils.import_user_module``). That is why this is a
package of its own beside ``trime``: ``import trime`` (and ``trime.core``, ``trime.extmem``)
stays free of fairseq and of registration, and ``trime-user-dir`` answers without importing
fairseq.
"""

from trime.errors import report_expected_errors_in_one_line
from trime.quiet import silence_known_noise, timestamped_log_lines

silence_known_noise()  # before faiss and Hydra speak; fairseq's own import-time lines are past
timestamped_log_lines()
report_expected_errors_in_one_line()

from trime.glue.checkpoints import allow_namespace_in_checkpoints  # noqa: E402

allow_namespace_in_checkpoints()  # legacy-args checkpoints under torch >= 2.6
from trime import lm, mt  # noqa: E402,F401  (register --task trime_lm / trime_translation and their criteria)
