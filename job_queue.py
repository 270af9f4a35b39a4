"""``python job_queue.py worker`` (``make worker``): a training worker of the scale-out mode.

The queue itself is ``service/job_queue.py``; this entry point stays where the
tutorial's scripts are, and ``job_queue.run_job`` stays the name of RQ jobs
queued before the code moved into ``service/``.
"""

import sys

from service.job_queue import main, run_job  # noqa: F401  (run_job: RQ's old function path)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
