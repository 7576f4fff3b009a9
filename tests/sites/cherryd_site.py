"""An app module for ``cherryd -i cherrypy_dropprivs -i cherryd_site -c site.conf``.

It only mounts the test site's pages (/whoami, /env, /regain); everything
else, the drop included, comes from the config file, as under cherryd.
"""

import importlib.util
import os

import cherrypy

_spec = importlib.util.spec_from_file_location(
    'dropprivs_test_site', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'site.py'))
_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_site)

cherrypy.tree.mount(_site.Root(), '/')
