"""Run site.py with a start listener at priority 76 that raises KeyboardInterrupt.

What Ctrl-C does when it lands between the servers' start (75) and the drop
(77), made deterministic: the bus re-raises it at once, the drop never runs and
the main thread unwinds. Usage: python interrupted_start.py [site.py arguments...]
"""

import os
import runpy
import sys

import cherrypy


def interrupt():
    raise KeyboardInterrupt


cherrypy.engine.subscribe('start', interrupt, priority=76)
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'site.py')
sys.argv = [SITE] + sys.argv[1:]
runpy.run_path(SITE, run_name='__main__')
