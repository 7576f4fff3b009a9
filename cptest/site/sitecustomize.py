"""Reach CherryPy servers that CherryPy's suite starts in subprocesses.

On PYTHONPATH only for the harness's plugin run; even then it does nothing
unless ``DROPPRIVS_EVERYWHERE=1``. See ``dropprivs_everywhere.py``.
"""

import os

if os.environ.get('DROPPRIVS_EVERYWHERE') == '1':
    import dropprivs_everywhere

    dropprivs_everywhere.install_import_hook()
