"""A small CherryPy site that shows who it runs as, from the kernel's view.

``python -m demo_app``: as root it binds port 80 on 127.0.0.1 and drops to
``nobody`` with :class:`cherrypy_dropprivs.DropPrivileges`; ``/`` and
``/identity.json`` then show every id, group, capability set and the umask
the kernel reports for the process and each of its threads.
"""
