"""The bottom layer: settings, engine, typed models, migrations driver, snapshot format, lock parsing, errors.

It imports nothing of runner, api, matrix or the entry points in knowngood/.
"""

# The service's version: the API reports it, the snapshot stamps it. The package metadata says the same.
__version__ = "0.1.0"
