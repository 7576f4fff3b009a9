"""Run site.py with os.getgroups faked to report one extra group after the drop.

A mismatch the kernel cannot be made to produce for real (setgroups either
sets the list or fails), so the OS is faked for this one case: once the
process is no longer root, os.getgroups() also reports group 4242.
Usage: python fake_extra_group.py [site.py arguments...]
"""

import os
import runpy
import sys

EXTRA_GROUP = 4242
_real_getgroups = os.getgroups


def getgroups():
    groups = _real_getgroups()
    if os.geteuid() != 0:
        return groups + [EXTRA_GROUP]
    return groups


os.getgroups = getgroups
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'site.py')
sys.argv = [SITE] + sys.argv[1:]
runpy.run_path(SITE, run_name='__main__')
